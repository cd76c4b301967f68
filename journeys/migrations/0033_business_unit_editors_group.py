"""Each business unit's editors group, tied to the unit by key (`BusinessUnit.editors_group`),
no longer found by the name "Editors: <slug>": a renamed slug left the real grant behind (a
revocation then removed nobody), and a new unit taking an old slug was handed the old unit's
group (its editors edited the other unit's workflows).

The data part links each unit to the group that holds its permission (the one named after the
current slug first, else the oldest). Another "Editors: ..." group holding the same unit's
permission (made when a revocation looked the group up by a renamed slug) gives its members to
the linked group and its permission up; it is deleted when it then holds nothing. The linked
groups are renamed after the units' current slugs (freeing old slugs' names). Unit grants of
people who no longer hold the Business-unit editors role (the role was taken away before it
took the units with it) are taken away, each recorded in the audit log.

Only the business unit, group and permission tables are read or written (tens to thousands of
rows): no big table is locked or rewritten; the added column is nullable (no table rewrite).
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

EDITORS_ROLE = "Business-unit editors"
CODENAME = "edit_unit_workflows"
REASON = "migration 0033: the Business-unit editors role had been taken away; its unit grants go with it"


def link_editors_groups(apps, schema_editor):
    BusinessUnit = apps.get_model("journeys", "BusinessUnit")
    AuditEntry = apps.get_model("journeys", "AuditEntry")
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    ContentType = apps.get_model("contenttypes", "ContentType")
    GroupPerm = apps.get_model("guardian", "GroupObjectPermission")
    UserPerm = apps.get_model("guardian", "UserObjectPermission")
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    Member = User.groups.through

    unit_type = ContentType.objects.filter(app_label="journeys", model="businessunit").first()
    perm = Permission.objects.filter(content_type=unit_type, codename=CODENAME).first() if unit_type else None
    if perm is None:  # a new database: nothing was ever granted
        return
    linked_ids: set[int] = set()  # one unit per group (a group made by hand may hold several units)
    for unit in BusinessUnit.objects.order_by("pk"):
        held = GroupPerm.objects.filter(content_type=unit_type, permission=perm, object_pk=str(unit.pk))
        groups = [g for g in Group.objects.filter(pk__in=held.values("group_id"), name__startswith="Editors: ")
                  .order_by("pk") if g.pk not in linked_ids]
        if not groups:
            continue
        keep = next((g for g in groups if g.name == f"Editors: {unit.slug}"), groups[0])
        members = set(Member.objects.filter(group_id=keep.pk).values_list("user_id", flat=True))
        for other in groups:
            if other.pk == keep.pk:
                continue
            moving = set(Member.objects.filter(group_id=other.pk).values_list("user_id", flat=True)) - members
            Member.objects.bulk_create([Member(user_id=user_id, group_id=keep.pk) for user_id in sorted(moving)])
            members |= moving
            held.filter(group_id=other.pk).delete()
            if not (GroupPerm.objects.filter(group_id=other.pk).exists() or other.permissions.exists()):
                other.delete()
        BusinessUnit.objects.filter(pk=unit.pk).update(editors_group=keep)
        linked_ids.add(keep.pk)

    linked = {u.pk: u for u in BusinessUnit.objects.filter(editors_group__isnull=False).select_related("editors_group")}
    for unit in linked.values():  # first out of the way, then each its slug's name (no clash between swaps)
        Group.objects.filter(pk=unit.editors_group_id).update(name=f"Editors: (renaming {unit.editors_group_id})")
    for unit in linked.values():
        name = f"Editors: {unit.slug}"
        if Group.objects.filter(name=name).exists():  # a group left by hand under that name
            name = f"Editors: {unit.slug} (unit {unit.pk})"
        Group.objects.filter(pk=unit.editors_group_id).update(name=name[:150])

    role = Group.objects.filter(name=EDITORS_ROLE).first()
    if role is None:  # the roles were never set up: nothing to compare with
        return
    with_role = Member.objects.filter(group_id=role.pk).values("user_id")
    users = {u.pk: u for u in User.objects.all().only("pk", "username")} if linked else {}
    for unit in linked.values():
        stale = Member.objects.filter(group_id=unit.editors_group_id).exclude(user_id__in=with_role)
        for user_id in sorted(stale.values_list("user_id", flat=True)):
            AuditEntry.objects.create(action="role_revoked", reason=REASON, data={
                "user": users[user_id].username, "role": "editor", "unit": unit.slug, "with_role": EDITORS_ROLE})
        stale.delete()
    direct = UserPerm.objects.filter(content_type=unit_type, permission=perm).exclude(user_id__in=with_role)
    for row in direct.select_related("user"):
        unit = BusinessUnit.objects.filter(pk=row.object_pk).first() if row.object_pk.isdigit() else None
        AuditEntry.objects.create(action="role_revoked", reason=REASON, data={
            "user": row.user.username, "role": "editor", "unit": unit.slug if unit else row.object_pk,
            "with_role": EDITORS_ROLE})
    direct.delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("guardian", "0003_remove_groupobjectpermission_guardian_gr_content_ae6aec_idx_and_more"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("journeys", "0032_history_retention"),
    ]

    operations = [
        migrations.AddField(
            model_name="businessunit",
            name="editors_group",
            field=models.OneToOneField(
                blank=True, editable=False, help_text="the group of this unit's editors (made at the first grant)",
                null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="editing_unit", to="auth.group",
            ),
        ),
        migrations.RunPython(link_editors_groups, migrations.RunPython.noop),
    ]
