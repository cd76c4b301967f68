"""The event tables' upkeep (retention per source, dedup keys past their window, partitions ahead
of the id sequence, resolved quarantine entries, finished rate-limit windows) every 10 minutes."""

from django.db import migrations


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="journeys.events_housekeeping",
        defaults={"func": "journeys.tasks.events_housekeeping", "schedule_type": "I", "minutes": 10, "repeats": -1},
    )


def drop_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="journeys.events_housekeeping").delete()


class Migration(migrations.Migration):
    dependencies = [("journeys", "0011_event_partitions"), ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more")]
    operations = [migrations.RunPython(create_schedule, drop_schedule)]
