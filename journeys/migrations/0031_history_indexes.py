"""Indexes that let the dashboard and the graph page read open and recent runs, and the history
retention read finished runs oldest first, per workflow (the version's own index is replaced by
version+created_at). Built and dropped CONCURRENTLY on PostgreSQL (journeys.concurrent_indexes:
the migration is not atomic): the runs table is the engine's busiest, and a plain CREATE INDEX
would stop enrolment, wake-ups and step progress while it is built."""

import django.db.models.deletion
from django.db import migrations, models

from journeys.concurrent_indexes import concurrent_index_operation


class Migration(migrations.Migration):
    atomic = False
    dependencies = [
        ('journeys', '0030_quarantine_history_purged'),
    ]

    operations = [
        concurrent_index_operation(
            "journeys",
            add=[
                ("JourneyRun", models.Index(condition=models.Q(('status__in', ['active', 'waiting'])),
                                            fields=['workflow', 'status', 'version'], name='run_open_idx')),
                ("JourneyRun", models.Index(condition=models.Q(('finished_at__isnull', False)),
                                            fields=['status', 'finished_at'], name='run_finished_idx')),
                ("JourneyRun", models.Index(condition=models.Q(('finished_at__isnull', False)),
                                            fields=['workflow', 'status', 'finished_at'],
                                            name='run_workflow_finished_idx')),
                ("JourneyRun", models.Index(fields=['version', 'created_at'], name='run_version_created_idx')),
            ],
            unindex_fks=[("JourneyRun", "version")],
            state_operations=[
                migrations.AlterField(
                    model_name='journeyrun',
                    name='version',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT,
                                            related_name='runs', to='journeys.workflowversion'),
                ),
            ],
        ),
    ]
