"""Bandit weights and auto-retirement: a django-q2 schedule every 15 minutes."""

from django.db import migrations


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="experiments.refresh",
        defaults={"func": "experiments.tasks.experiments_refresh", "schedule_type": "I", "minutes": 15, "repeats": -1},
    )


def drop_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="experiments.refresh").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("experiments", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedule, drop_schedule)]
