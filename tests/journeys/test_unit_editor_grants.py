"""Who edits a business unit's workflows, as ops grant and revoke it (QA rolesscale #2, #3, #4,
#12): the unit's editors group is the unit's by key, so a renamed or reused slug moves nobody's
rights; taking the Business-unit editors role away takes the units with it (and a unit grant
without the role reaches nothing); the Roles page shows the units; the editors page says what
it did."""

from __future__ import annotations

import re
from importlib import import_module

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from guardian.shortcuts import assign_perm

from journeys.models import AuditEntry, BusinessUnit
from journeys.selectors import EDIT, UNIT_PERM, user_can, workflows_for_user
from journeys.services import governance as gov
from journeys.services.workflows import workflow_create
from tests.factories import UserFactory
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import admin_form_data, login

pytestmark = pytest.mark.django_db


def fresh(user):
    return type(user).objects.get(pk=user.pk)  # forget cached permissions


def said(response) -> list[str]:
    return [m.message for m in get_messages(response.wsgi_request)]


def editors_page(client, unit):
    return client.get(reverse("admin:journeys_businessunit_editors", args=[unit.pk])).content.decode()


def listed_editors(client, unit) -> list[str]:
    return re.findall(r"<li>([^<]+)</li>", editors_page(client, unit).split('id="editors">')[1].split("</ul>")[0])


def editors_post(client, unit, username, grant, reason="because"):
    return client.post(reverse("admin:journeys_businessunit_editors", args=[unit.pk]),
                       {"username": username, "grant": grant, "reason": reason}, follow=True)


def rename(client, unit, slug):
    url = reverse("admin:journeys_businessunit_change", args=[unit.pk])
    response = client.post(url, admin_form_data(client.get(url), slug=slug, change_reason="reorganisation"))
    assert response.status_code == 302, response.content[:2000]
    unit.refresh_from_db()


def may_edit_through_the_admin(user, workflow) -> bool:
    """The editor posts the workflow's change form (a description), as the QA did."""
    client = login(Client(), user)
    url = reverse("admin:journeys_workflow_change", args=[workflow.pk])
    page = client.get(url)
    if page.status_code != 200 or "adminform" not in page.context:
        return False
    response = client.post(url, admin_form_data(page, description="edited", change_reason="edit"))
    workflow.refresh_from_db()
    return response.status_code == 302 and workflow.description == "edited"


@pytest.mark.parametrize("roles", [[gov.ROLE_ANALYSTS], []], ids=["analysts", "no-role"])
def test_taking_the_editors_role_away_on_the_roles_page_takes_the_units_with_it(people, live_workflow, roles):
    # given the Retention editor, whose Roles page shows the role and the unit
    editor, ops = people["editor"], login(Client(), people["ops"])
    url = reverse("admin:journeys_rolemember_change", args=[editor.pk])
    page = ops.get(url)
    assert "Retention (retention)" in page.content.decode()
    assert f"{gov.ROLE_EDITORS} (Retention)" in ops.get(reverse("admin:journeys_rolemember_changelist")).content.decode()

    # when ops set the roles to Analysts only (or none), with a reason
    response = ops.post(url, {"roles": roles, "change_reason": "moved to analytics: no more editing"}, follow=True)

    # then the unit grant went too: no workflow to edit, the workflow form refuses, the page said so
    # and the audit log records it with the reason
    assert response.status_code == 200
    assert "editor no longer edits the workflows of Retention." in said(response)
    editor = fresh(editor)
    assert not editor.groups.filter(editing_unit__isnull=False).exists()
    assert not workflows_for_user(editor, EDIT).exists()
    assert not may_edit_through_the_admin(editor, live_workflow)
    revoked = AuditEntry.objects.get(action="role_revoked", data__unit="retention")
    assert (revoked.actor, revoked.reason) == (people["ops"], "moved to analytics: no more editing")

    # and giving the role back later does not bring the old unit back unseen
    gov_roles = [gov.ROLE_EDITORS]
    ops.post(url, {"roles": gov_roles, "change_reason": "back to editing"})
    assert not workflows_for_user(fresh(editor), EDIT).exists()
    assert gov.business_units_granted(user=editor) == []


def test_a_unit_grant_without_the_editors_role_reaches_nothing_and_the_roles_page_says_so(people, live_workflow):
    # given an editor taken out of the role by hand (as before the role took the units with it)
    editor = people["editor"]
    editor.groups.remove(Group.objects.get(name=gov.ROLE_EDITORS))
    editor = fresh(editor)

    # then the unit grant left behind edits nothing, and the Roles list shows it for what it is
    assert not user_can(editor, EDIT, live_workflow) and not workflows_for_user(editor, EDIT).exists()
    page = login(Client(), people["ops"]).get(reverse("admin:journeys_rolemember_changelist")).content.decode()
    assert "unit grants without the editors role, which edit nothing: Retention" in page


def test_revoking_an_editor_after_the_unit_slug_was_renamed_revokes_them(people, units, live_workflow):
    # given ops renamed the unit's slug on its page
    ops, unit = login(Client(), people["ops"]), units["retention"]
    rename(ops, unit, "retention-renamed")
    assert unit.editors_group.name == "Editors: retention-renamed"
    assert user_can(fresh(people["editor"]), EDIT, live_workflow)

    # when ops revoke the editor on the unit's editors page
    response = editors_post(ops, unit, "editor", "revoke", reason="left the company")

    # then the page says it, and it is so: the editor edits nothing of the unit, nor is listed
    assert said(response)[-1] == "editor: revoked: no longer edits the workflows of Retention"
    assert "revokeed" not in response.content.decode()
    editor = fresh(people["editor"])
    assert not user_can(editor, EDIT, live_workflow) and not may_edit_through_the_admin(editor, live_workflow)
    assert listed_editors(ops, unit) == ["nobody"]

    # and revoking them again says there was nothing to revoke, instead of "revoked"
    again = editors_post(ops, unit, "editor", "revoke", reason="twice")
    assert said(again) == [] and "editor is not an editor of Retention: nothing was revoked" in again.content.decode()


def test_a_new_unit_taking_a_renamed_units_old_slug_gets_editors_of_its_own(people, units, live_workflow):
    # given Retention renamed, and a new unit made with its old slug
    ops, old = login(Client(), people["ops"]), units["retention"]
    rename(ops, old, "retention-old")
    add = ops.post(reverse("admin:journeys_businessunit_add"),
                   {"name": "New retention", "slug": "retention", "change_reason": "new team"})
    assert add.status_code == 302
    new = BusinessUnit.objects.get(slug="retention")
    newcomer = UserFactory(username="newcomer", is_staff=True)
    new_workflow = workflow_create(name="New team's flow", business_unit=new)

    # when ops grant the newcomer on the new unit's editors page
    response = editors_post(ops, new, "newcomer", "grant", reason="joins the new team")

    # then the newcomer edits the new unit's workflows and none of the old unit's; each page lists its own
    assert said(response)[-1] == "newcomer: granted: now edits the workflows of New retention"
    newcomer = fresh(newcomer)
    assert user_can(newcomer, EDIT, new_workflow) and not user_can(newcomer, EDIT, live_workflow)
    assert not may_edit_through_the_admin(newcomer, live_workflow)
    assert listed_editors(ops, new) == ["newcomer"] and listed_editors(ops, old) == ["editor"]
    new.refresh_from_db()
    assert new.editors_group.name == "Editors: retention" and old.editors_group.name == "Editors: retention-old"


def test_revoking_is_refused_when_a_group_made_by_hand_still_grants_the_unit(people, units, live_workflow):
    # given a superuser's own group that also holds the Retention permission, with the editor in it
    unit = units["retention"]
    by_hand = Group.objects.create(name="Retention leads")
    assign_perm(UNIT_PERM, by_hand, unit)
    people["editor"].groups.add(by_hand)

    # when ops revoke the editor
    response = editors_post(login(Client(), people["ops"]), unit, "editor", "revoke")

    # then they are told why nothing was revoked, and nothing was
    assert "also edits Retention through the group Retention leads" in response.content.decode()
    assert user_can(fresh(people["editor"]), EDIT, live_workflow)
    assert fresh(people["editor"]).groups.filter(pk=unit.editors_group_id).exists()


def test_the_migration_ties_each_units_group_to_it_and_repairs_what_the_slug_lookup_did(people, units):
    """The state QA left (a slug renamed, a revocation that made an empty group, a new unit on
    the old slug, a role taken away without its unit), as the old code made it."""
    # given groups found by name, as before: Retention's "Editors: retention" with the editor...
    retention, support = units["retention"], units["support"]
    BusinessUnit.objects.update(editors_group=None)
    old_group = Group.objects.get(name="Editors: retention")
    # ...Retention renamed, and a revocation that made "Editors: retention-renamed" holding Retention too
    BusinessUnit.objects.filter(pk=retention.pk).update(slug="retention-renamed")
    made_by_revoke = Group.objects.create(name="Editors: retention-renamed")
    assign_perm(UNIT_PERM, made_by_revoke, retention)
    late = UserFactory(username="late", is_staff=True)
    late.groups.add(made_by_revoke, Group.objects.get(name=gov.ROLE_EDITORS))
    # ...a new unit on the old slug, with nothing of its own yet
    new = BusinessUnit.objects.create(name="New retention", slug="retention")
    # ...and the Support editor whose role was taken away while the unit grant stayed
    people["other_editor"].groups.remove(Group.objects.get(name=gov.ROLE_EDITORS))

    # when the data migration runs
    import_module("journeys.migrations.0033_business_unit_editors_group").link_editors_groups(django_apps, None)

    # then Retention has one group, under its slug's name, with both its editors; the old one is gone
    retention.refresh_from_db()
    assert retention.editors_group == made_by_revoke
    assert Group.objects.get(pk=made_by_revoke.pk).name == "Editors: retention-renamed"
    assert not Group.objects.filter(pk=old_group.pk).exists()
    assert set(retention.editors_group.user_set.values_list("username", flat=True)) == {"editor", "late"}
    # the new unit has none yet (its first grant makes it), and the old slug's name is free
    new.refresh_from_db()
    assert new.editors_group is None and not Group.objects.filter(name="Editors: retention").exists()
    # Support's group is linked; the editor without the role left it, recorded in the audit log
    support.refresh_from_db()
    assert support.editors_group.name == "Editors: support"
    assert not support.editors_group.user_set.exists()
    entry = AuditEntry.objects.get(action="role_revoked", data__user="other_editor")
    assert entry.data["unit"] == "support" and entry.reason.startswith("migration 0033")
    # and the rights follow: the editor and the late editor still edit Retention
    flow = workflow_create(name="Retention flow", business_unit=retention)
    assert user_can(fresh(people["editor"]), EDIT, flow) and user_can(fresh(late), EDIT, flow)
