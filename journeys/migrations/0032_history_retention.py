"""The history retention (HISTORY_RETENTION_DAYS): the profiles it looks at, how far it has walked
the profiles made before (the housekeeping queues those a batch at a time, only with a retention
set: the migration reads no customer), and finished jobs by age (built CONCURRENTLY on
PostgreSQL: the migration is not atomic)."""

from django.db import migrations, models

from journeys.concurrent_indexes import concurrent_index_operation


class Migration(migrations.Migration):
    atomic = False
    dependencies = [
        ('journeys', '0031_history_indexes'),
    ]

    operations = [
        migrations.CreateModel(
            name='ProfileCheck',
            fields=[
                ('customer_id', models.BigIntegerField(primary_key=True, serialize=False)),
            ],
        ),
        migrations.CreateModel(
            name='ProfileCheckBackfill',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('last_id', models.BigIntegerField(default=0)),
                ('done', models.BooleanField(default=False)),
            ],
        ),
        concurrent_index_operation("journeys", add=[(
            "Job", models.Index(condition=models.Q(('finished_at__isnull', False)), fields=['finished_at'],
                                name='job_finished_idx'))]),
    ]
