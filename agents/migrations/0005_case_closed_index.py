"""Closed cases by when they closed, for the history retention (HISTORY_RETENTION_DAYS)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('agents', '0004_config_history'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='case',
            index=models.Index(condition=models.Q(('status', 'closed')), fields=['closed_at'], name='case_closed_idx'),
        ),
    ]
