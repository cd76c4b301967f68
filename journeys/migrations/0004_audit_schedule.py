"""The governance audit runs daily on the q2 scheduler (and on demand: manage.py run_audit)."""

from django.db import migrations


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="journeys.audit",
        defaults={"func": "journeys.services.governance.audit_scheduled", "schedule_type": "D", "repeats": -1},
    )


def drop_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="journeys.audit").delete()


class Migration(migrations.Migration):
    dependencies = [("journeys", "0003_auditreport_alter_businessunit_options_and_more")]
    operations = [migrations.RunPython(create_schedule, drop_schedule)]
