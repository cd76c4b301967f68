"""Failed messages by when they failed (`updated_at`, a partial index holding only failed rows),
for the ops dashboard's failures per workflow: a message whose template failed to render has no
provider attempt, so the attempt log cannot count it (day2ops QA: a broken workflow edit failed
every message and the workflow's row showed nothing wrong). Only failed rows are in the index,
so the sends that succeed (nearly all) never write to it. Built CONCURRENTLY on PostgreSQL
(journeys.concurrent_indexes): an install with a large history keeps sending meanwhile."""

from django.db import migrations, models

from journeys.concurrent_indexes import concurrent_index_operation


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("channels_app", "0011_channelbreaker_failing_ms_retry_after")]
    operations = [
        concurrent_index_operation("channels_app", add=[(
            "Delivery", models.Index(condition=models.Q(status="failed"), fields=["updated_at"],
                                     name="delivery_failed_idx"))]),
    ]
