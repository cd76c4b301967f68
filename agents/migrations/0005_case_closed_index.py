"""Closed cases by when they closed, for the history retention (HISTORY_RETENTION_DAYS). Built
CONCURRENTLY on PostgreSQL (journeys.concurrent_indexes; the migration is not atomic), so cases
keep being opened and answered while it is built."""

from django.db import migrations, models

from journeys.concurrent_indexes import concurrent_index_operation


class Migration(migrations.Migration):
    atomic = False
    dependencies = [
        ('agents', '0004_config_history'),
    ]

    operations = [
        concurrent_index_operation("agents", add=[(
            "Case", models.Index(condition=models.Q(('status', 'closed')), fields=['closed_at'], name='case_closed_idx'))]),
    ]
