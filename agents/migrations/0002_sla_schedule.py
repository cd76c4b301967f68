"""The SLA clock: a django-q2 schedule that runs agents.tasks.sla_tick every minute."""

from django.db import migrations


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="agents.sla_tick",
        defaults={"func": "agents.tasks.sla_tick", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def drop_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="agents.sla_tick").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedule, drop_schedule)]
