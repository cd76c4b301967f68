"""The outbound event stream's minute tick: deliver what is due (a kick after each commit sends
most batches at once; the tick catches the rest and the retries), purge what was delivered long
ago and old API access-log rows."""

from django.db import migrations


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="journeys.stream_tick",
        defaults={"func": "journeys.tasks.stream_tick", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def drop_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="journeys.stream_tick").delete()


class Migration(migrations.Migration):
    dependencies = [("journeys", "0017_api_tokens_and_stream"), ("django_q", "0001_initial")]
    operations = [migrations.RunPython(create_schedule, drop_schedule)]
