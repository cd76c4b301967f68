"""Ops admins kept every django_q permission, and a q2 schedule names any callable the workers run
(os.system): take add/change away from the existing role group (roles_setup no longer grants them)."""

from django.db import migrations

KEEP = ("view_schedule", "view_task", "view_success", "view_failure", "view_ormq", "delete_success", "delete_failure")


def narrow(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group = Group.objects.filter(name="Ops admins").first()
    if group is not None:
        group.permissions.remove(*Permission.objects.filter(content_type__app_label="django_q")
                                 .exclude(codename__in=KEEP))


class Migration(migrations.Migration):

    dependencies = [
        ("journeys", "0026_customer_erased_at"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(narrow, migrations.RunPython.noop)]
