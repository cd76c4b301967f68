"""Indexes that let the dashboard and the graph page read open and recent runs, and the history
retention read finished runs oldest first (the version's own index is replaced by version+created_at)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('journeys', '0030_quarantine_history_purged'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='journeyrun',
            index=models.Index(condition=models.Q(('status__in', ['active', 'waiting'])), fields=['workflow', 'status', 'version'], name='run_open_idx'),
        ),
        migrations.AddIndex(
            model_name='journeyrun',
            index=models.Index(condition=models.Q(('finished_at__isnull', False)), fields=['status', 'finished_at'], name='run_finished_idx'),
        ),
        migrations.AddIndex(
            model_name='journeyrun',
            index=models.Index(fields=['version', 'created_at'], name='run_version_created_idx'),
        ),
        migrations.AlterField(
            model_name='journeyrun',
            name='version',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='runs', to='journeys.workflowversion'),
        ),
    ]
