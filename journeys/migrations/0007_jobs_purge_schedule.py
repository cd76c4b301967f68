"""Data-subject exports kept by background jobs are purged hourly on the q2 scheduler (they are
also purged whenever jobs are started or viewed), so no export outlives its day unnoticed."""

from django.db import migrations


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="journeys.jobs_purge_exports",
        defaults={"func": "journeys.services.jobs.jobs_purge_exports", "schedule_type": "H", "repeats": -1},
    )


def drop_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="journeys.jobs_purge_exports").delete()


class Migration(migrations.Migration):
    dependencies = [("journeys", "0006_jobs")]
    operations = [migrations.RunPython(create_schedule, drop_schedule)]
