"""The permission matrix: every role, through the services and through the admin, denied paths included."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.urls import reverse

from journeys.errors import PermissionDenied
from journeys.models import AuditEntry, WorkflowVersion
from journeys.services import governance as gov
from journeys.services.workflows import (
    version_approve,
    version_canary_start,
    version_note_changed,
    version_publish,
    version_submit,
    workflow_create,
    workflow_rollback,
)
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import draft_of, login

pytestmark = pytest.mark.django_db

ROLES = ["ops", "editor", "other_editor", "approver", "agent", "analyst", "nobody"]


def _attempt(func):
    try:
        func()
    except PermissionDenied:
        return "denied"
    return "ok"


# who may do what to a Retention workflow (the editor's unit; other_editor owns Support)
MATRIX = {
    #               edit/propose  review  publish/canary/rollback  operate (safe mode)
    "ops":          ("ok",        "ok",   "ok",                    "ok"),
    "editor":       ("ok",        "denied", "denied",              "denied"),
    "other_editor": ("denied",    "denied", "denied",              "denied"),
    "approver":     ("denied",    "ok",   "ok",                    "denied"),
    "agent":        ("denied",    "denied", "denied",              "denied"),
    "analyst":      ("denied",    "denied", "denied",              "denied"),
    "nobody":       ("denied",    "denied", "denied",              "denied"),
}


@pytest.mark.parametrize("role", ROLES)
def test_service_permission_matrix(people, live_workflow, role):
    user = people[role]
    can_edit, can_review, can_publish, can_operate = MATRIX[role]

    # edit: build a draft; then propose it
    result = _attempt(lambda: draft_of(live_workflow, actor=user))
    assert result == can_edit
    draft = draft_of(live_workflow)
    assert _attempt(lambda: version_submit(version=draft, actor=user, summary="change")) == can_edit

    # review: approve a proposal made by someone else
    proposal = draft_of(live_workflow)
    version_submit(version=proposal, actor=people["editor"], summary="tighter rule")
    assert _attempt(lambda: version_approve(version=proposal, actor=user, comment="ok")) == can_review

    # publish, canary and rollback of an approved version
    approved = draft_of(live_workflow)
    version_submit(version=approved, actor=None, summary="system")
    version_approve(version=approved, actor=None)
    assert _attempt(lambda: version_canary_start(version=approved, percent=10, actor=user, reason="try")) == can_publish
    assert _attempt(lambda: version_publish(version=approved, actor=user, reason="go")) == can_publish
    assert _attempt(lambda: workflow_rollback(workflow=live_workflow, actor=user, reason="undo")) == can_publish

    # outage switches
    assert _attempt(lambda: gov.safe_mode_set(active=True, actor=user, reason="outage")) == can_operate


def test_editor_cannot_move_a_workflow_into_another_unit(people, units, live_workflow):
    from journeys.services.workflows import workflow_save

    live_workflow.business_unit = units["support"]
    with pytest.raises(PermissionDenied):
        workflow_save(workflow=live_workflow, actor=people["editor"], reason="move")
    with pytest.raises(PermissionDenied):
        workflow_create(name="Sneaky", business_unit=units["support"], actor=people["editor"])
    created = workflow_create(name="Mine", business_unit=units["retention"], actor=people["editor"], reason="new")
    assert created.created_by == people["editor"]


def test_an_author_cannot_approve_their_own_change(people, live_workflow):
    ops = people["ops"]
    draft = draft_of(live_workflow, actor=ops)
    version_submit(version=draft, actor=ops, summary="mine")
    ops.is_superuser = False
    ops.save()
    ops = type(ops).objects.get(pk=ops.pk)  # forget cached permissions
    with pytest.raises(PermissionDenied, match="someone other than its author"):
        version_approve(version=draft, actor=ops, comment="self")
    version_approve(version=draft, actor=people["approver"], comment="fine")


def test_people_must_give_a_reason(people, live_workflow):
    draft = draft_of(live_workflow)
    with pytest.raises(ValidationError) as exc:
        version_submit(version=draft, actor=people["editor"], summary="  ")
    assert "summary" in exc.value.message_dict
    with pytest.raises(ValidationError):
        gov.safe_mode_set(active=True, actor=people["ops"], reason="")


def test_edit_recheck_inside_the_service(people, live_workflow, support_workflow):
    """A user editing a version of another unit is refused by the service itself, not only the admin."""
    foreign = draft_of(support_workflow)
    with pytest.raises(PermissionDenied):
        version_note_changed(version=foreign, actor=people["editor"], reason="sneaky")
    mine = draft_of(live_workflow)
    version_note_changed(version=mine, actor=people["editor"], reason="tweak")
    assert AuditEntry.objects.filter(action="version_edited", actor=people["editor"]).exists()


def test_agents_role_holds_no_model_wide_permission(people):
    """Agents reach cases through the object permissions routing grants (see test_governance_consistency)."""
    assert not Permission.objects.filter(group__name=gov.ROLE_AGENTS).exists()
    analyst_perms = Permission.objects.filter(group__name=gov.ROLE_ANALYSTS)
    assert analyst_perms.exists()
    assert all(p.codename.startswith("view_") for p in analyst_perms)
    assert gov.roles_setup() == gov.roles_setup()  # idempotent
    assert set(Group.objects.values_list("name", flat=True)) >= set(gov.ROLES)


# --------------------------------------------------------------------------- the admin, as each role


@pytest.mark.parametrize(
    "role, sees",
    [
        ("ops", {"Signup", "Support follow-up"}),
        ("editor", {"Signup"}),
        ("other_editor", {"Support follow-up"}),
        ("approver", {"Signup", "Support follow-up"}),
        ("analyst", {"Signup", "Support follow-up"}),
        ("agent", None),
        ("nobody", None),
    ],
)
def test_workflow_list_shows_only_what_the_role_may_see(client, people, live_workflow, support_workflow, role, sees):
    login(client, people[role])
    response = client.get(reverse("admin:journeys_workflow_changelist"))
    if sees is None:
        assert response.status_code == 403
        return
    assert response.status_code == 200
    shown = {w.name for w in response.context["cl"].result_list}
    assert shown == sees
    versions = client.get(reverse("admin:journeys_workflowversion_changelist"))
    assert {v.workflow.name for v in versions.context["cl"].result_list} == sees


@pytest.mark.parametrize(
    "role, actions",
    [
        ("ops", {"propose", "approve", "reject", "publish", "canary", "new_draft", "export_json"}),
        ("editor", {"propose", "new_draft", "export_json"}),
        ("approver", {"approve", "reject", "publish", "canary", "export_json"}),
        ("analyst", {"export_json"}),
    ],
)
def test_version_actions_offered_per_role(client, people, live_workflow, role, actions):
    login(client, people[role])
    response = client.get(reverse("admin:journeys_workflowversion_changelist"))
    offered = {name for name, _ in response.context["action_form"].fields["action"].choices if name}
    offered.discard("delete_selected")
    assert offered == actions


def test_editor_edits_own_drafts_but_not_other_units_or_live_versions(client, people, live_workflow, support_workflow):
    login(client, people["editor"])
    own_draft = draft_of(live_workflow)
    foreign_draft = draft_of(support_workflow)

    def page(version):
        return client.get(reverse("admin:journeys_workflowversion_change", args=[version.pk]))

    own = page(own_draft)
    assert own.status_code == 200 and b'name="change_reason"' in own.content
    live = page(live_workflow.live_version)
    assert live.status_code == 200 and b'name="change_reason"' not in live.content  # read-only
    assert page(foreign_draft).status_code == 302  # not in their list: the admin redirects to the index
    response = client.post(reverse("admin:journeys_workflowversion_change", args=[foreign_draft.pk]),
                           {"notes": "x", "change_reason": "sneaky"})
    assert response.status_code in (302, 403)
    foreign_draft.refresh_from_db()
    assert foreign_draft.notes != "x"


def test_editor_cannot_publish_through_a_forged_admin_action(client, people, live_workflow):
    draft = draft_of(live_workflow)
    version_submit(version=draft, actor=None, summary="s")
    version_approve(version=draft, actor=None)
    login(client, people["editor"])
    response = client.post(reverse("admin:journeys_workflowversion_changelist"),
                           {"action": "publish", "_selected_action": [draft.pk], "reason": "please"})
    assert response.status_code in (200, 302)
    assert WorkflowVersion.objects.get(pk=draft.pk).state == "approved"


def test_approver_publishes_through_the_admin_action(client, people, live_workflow):
    draft = draft_of(live_workflow)
    version_submit(version=draft, actor=people["editor"], summary="s")
    version_approve(version=draft, actor=people["approver2"], comment="ok")
    login(client, people["approver"])
    client.post(reverse("admin:journeys_workflowversion_changelist"),
                {"action": "publish", "_selected_action": [draft.pk], "reason": "go live"})
    assert WorkflowVersion.objects.get(pk=draft.pk).state == "live"
    entry = AuditEntry.objects.get(action="published", version=draft)
    assert (entry.actor, entry.reason) == (people["approver"], "go live")


@pytest.mark.parametrize("role, status", [("ops", 200), ("analyst", 200), ("approver", 200), ("editor", 403),
                                          ("agent", 403)])
def test_ops_dashboard_access(client, people, role, status):
    login(client, people[role])
    assert client.get(reverse("admin:journeys_ops_dashboard")).status_code == status


def test_analyst_reads_runs_but_cannot_change_anything(client, people, live_workflow):
    login(client, people["analyst"])
    assert client.get(reverse("admin:journeys_journeyrun_changelist")).status_code == 200
    change = client.get(reverse("admin:journeys_workflow_change", args=[live_workflow.pk]))
    assert change.status_code == 200 and b'name="change_reason"' not in change.content
    assert client.get(reverse("admin:journeys_workflow_add")).status_code == 403


# --------------------------------------------------------------------------- every governance page x every role

PAGES = {
    "workflows": ("admin:journeys_workflow_changelist", None),
    "versions": ("admin:journeys_workflowversion_changelist", None),
    "change requests": ("admin:journeys_changerequest_changelist", None),
    "audit log": ("admin:journeys_auditentry_changelist", None),
    "runs": ("admin:journeys_journeyrun_changelist", None),
    "dashboard": ("admin:journeys_ops_dashboard", None),
    "audit reports": ("admin:journeys_auditreport_changelist", None),
    "business units": ("admin:journeys_businessunit_changelist", None),
    "unit editors": ("admin:journeys_businessunit_editors", "unit"),
    "workflow": ("admin:journeys_workflow_change", "workflow"),
    "diff": ("admin:journeys_workflow_diff", "workflow"),
    "version": ("admin:journeys_workflowversion_change", "version"),
    "dry run": ("admin:journeys_workflowversion_dry_run", "version"),
}
OK, NO = 200, 403
EXPECTED = {  # page -> status for ops, editor, approver, analyst, agent
    "workflows":       (OK, OK, OK, OK, NO),
    "versions":        (OK, OK, OK, OK, NO),
    "change requests": (OK, OK, OK, OK, NO),
    "audit log":       (OK, OK, OK, OK, NO),
    # editors watch their unit's runs once JourneyRunAdmin uses RunScopeMixin (test_governance_runs.py)
    "runs":            (OK, OK, OK, OK, NO),
    "dashboard":       (OK, NO, OK, OK, NO),
    "audit reports":   (OK, NO, OK, OK, NO),
    "business units":  (OK, NO, OK, NO, NO),
    "unit editors":    (OK, NO, OK, NO, NO),
    "workflow":        (OK, OK, OK, OK, NO),
    "diff":            (OK, OK, OK, OK, NO),
    "version":         (OK, OK, OK, OK, NO),
    "dry run":         (OK, OK, OK, OK, NO),
}


@pytest.mark.parametrize("page", list(PAGES))
@pytest.mark.parametrize("index, role", list(enumerate(["ops", "editor", "approver", "analyst", "agent"])))
def test_every_governance_page_per_role(client, people, units, live_workflow, page, index, role):
    name, arg = PAGES[page]
    args = {"unit": [units["retention"].pk], "workflow": [live_workflow.pk],
            "version": [live_workflow.live_version_id], None: []}[arg]
    login(client, people[role])
    response = client.get(reverse(name, args=args))
    expected = EXPECTED[page][index]
    if expected == NO and response.status_code == 302:  # the admin sends users away from objects they cannot see
        return
    assert response.status_code == expected, (page, role, response.status_code)


def test_ops_grants_and_revokes_editors_in_the_admin(client, people, units):
    from journeys.models import Workflow
    from journeys.services.governance import business_unit_editors

    unit = units["support"]
    url = reverse("admin:journeys_businessunit_editors", args=[unit.pk])
    login(client, people["ops"])
    client.post(url, {"username": "editor", "grant": "grant", "reason": "covers support this month"})
    assert people["editor"] in business_unit_editors(unit=unit)
    assert AuditEntry.objects.filter(action="role_granted", reason="covers support this month").exists()
    editor = type(people["editor"]).objects.get(pk=people["editor"].pk)
    workflow = workflow_create(name="Support flow", business_unit=unit, actor=editor, reason="new")
    assert isinstance(workflow, Workflow)

    client.post(url, {"username": "editor", "grant": "revoke", "reason": "back to retention"})
    assert people["editor"] not in business_unit_editors(unit=unit)
    login(client, people["approver"])  # may look, may not grant
    client.post(url, {"username": "approver", "grant": "grant", "reason": "me too"})
    assert people["approver"] not in business_unit_editors(unit=unit)
