"""Bandit weights follow assignments within a minute: a django-q2 schedule every minute that updates
the bandits with `bandit_every` new assignments (the engine's batches no longer do it themselves)."""

from django.db import migrations


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="experiments.bandits",
        defaults={"func": "experiments.tasks.bandits_due", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def drop_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="experiments.bandits").delete()


class Migration(migrations.Migration):
    dependencies = [("experiments", "0002_refresh_schedule")]

    operations = [migrations.RunPython(create_schedule, drop_schedule)]
