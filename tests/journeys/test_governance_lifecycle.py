"""The lifecycle: draft -> in review -> approved -> (canary) -> live -> retired, rollback, history."""

from __future__ import annotations

import re

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from journeys.services.workflows import step_token
from journeys.engine.compiled import canary_bucket, trigger_index
from journeys.models import AuditEntry, ChangeRequest, Customer, JourneyRun, Step, Workflow, WorkflowVersion
from journeys.services.workflows import (
    version_approve,
    version_canary_start,
    version_publish,
    version_reject,
    version_submit,
    workflow_canary_stop,
    workflow_rollback,
)
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import draft_of, login

pytestmark = pytest.mark.django_db


def approved_draft(workflow, people, **changes):
    draft = draft_of(workflow, actor=people["editor"], **changes)
    version_submit(version=draft, actor=people["editor"], summary="route pros elsewhere")
    version_approve(version=draft, actor=people["approver"], comment="looks right")
    draft.refresh_from_db()
    return draft


def test_full_lifecycle_with_change_request_audit_and_history(people, live_workflow):
    v1 = live_workflow.live_version
    draft = draft_of(live_workflow, actor=people["editor"], entry_rule="profile.ltv >= 0")
    assert draft.state == "draft"

    request = version_submit(version=draft, actor=people["editor"], summary="only customers with ltv")
    draft.refresh_from_db()
    assert draft.state == "in_review" and request.status == "open" and request.base_version == v1

    version_approve(version=draft, actor=people["approver"], comment="fine")
    draft.refresh_from_db()
    assert draft.state == "approved" and draft.approved_by == people["approver"]

    version_publish(version=draft, actor=people["approver"], reason="go")
    draft.refresh_from_db()
    v1.refresh_from_db()
    live_workflow.refresh_from_db()
    assert (draft.state, v1.state, live_workflow.live_version_id) == ("live", "retired", draft.pk)
    assert ChangeRequest.objects.get(pk=request.pk).status == "published"
    actions = list(AuditEntry.objects.filter(version=draft).order_by("at", "id").values_list("action", "actor__username", "reason"))
    assert actions == [
        ("version_created", "editor", "test draft"),
        ("proposed", "editor", "only customers with ltv"),
        ("approved", "approver", "fine"),
        ("published", "approver", "go"),
    ]
    history = draft.history.order_by("history_date")
    assert [h.history_change_reason for h in history][-1] == "go"
    assert {h.state for h in history} >= {"draft", "in_review", "approved", "live"}


def test_people_cannot_publish_a_draft_or_a_version_in_review(people, live_workflow):
    draft = draft_of(live_workflow)
    with pytest.raises(ValidationError, match="only approved"):
        version_publish(version=draft, actor=people["approver"], reason="skip review")
    version_submit(version=draft, actor=people["editor"], summary="s")
    with pytest.raises(ValidationError, match="only approved"):
        version_publish(version=draft, actor=people["approver"], reason="skip review")


def test_reject_sends_it_back_to_draft_with_the_comment(people, live_workflow):
    draft = draft_of(live_workflow)
    request = version_submit(version=draft, actor=people["editor"], summary="s")
    version_reject(version=draft, actor=people["approver"], comment="the rule is too broad")
    request.refresh_from_db()
    draft.refresh_from_db()
    assert draft.state == "draft" and request.status == "rejected"
    assert request.decision_comment == "the rule is too broad" and request.decided_by == people["approver"]


def test_change_after_approval_through_the_step_form_sends_it_back_to_review(client, people, live_workflow):
    # given an approved draft, whose version page shows the step's rule read-only with a link to its form
    draft = approved_draft(live_workflow, people)
    step = draft.steps.get(key="check")
    login(client, people["editor"])
    version_page = client.get(reverse("admin:journeys_workflowversion_change", args=[draft.pk])).content.decode()
    step_url = reverse("admin:journeys_step_change", args=[step.pk])
    assert f'href="{step_url}">edit in its form</a>' in version_page
    assert 'name="steps-0-config"' not in version_page

    # when the editor changes the rule in the condition's form, saying why
    response = client.post(step_url, {"key": "check", "rule": "profile.plan == 'business'",
                                      "change_reason": "business plan instead", "_save": "Save",
                                      "loaded": step_token(step=step)})

    # then the step changed, with the reason on its history, and the version went back to review
    assert response.status_code == 302, response.content[:3000]
    draft.refresh_from_db()
    assert draft.state == "in_review" and draft.approved_fingerprint == ""
    assert Step.objects.get(pk=step.pk).config == {"rule": "profile.plan == 'business'"}
    assert Step.history.filter(id=step.pk).first().history_change_reason == "business plan instead"
    assert AuditEntry.objects.filter(action="returned_to_review", version=draft).exists()
    assert ChangeRequest.objects.get(version=draft).status == "open"


def test_the_version_page_no_longer_takes_a_raw_config(client, people, live_workflow):
    # given a draft and its version page as the editor's browser would post it back
    draft = draft_of(live_workflow)
    step = draft.steps.get(key="check")
    login(client, people["editor"])
    url = reverse("admin:journeys_workflowversion_change", args=[draft.pk])
    data = _form_data(client.get(url))
    index = next(i for i in range(int(data["steps-TOTAL_FORMS"])) if data.get(f"steps-{i}-id") == str(step.pk))

    # when a raw config (and kind) is forged into the step row
    data.update({f"steps-{index}-config": '{"rule": "1 +"}', f"steps-{index}-kind": "exit",
                 f"steps-{index}-x": "40", "change_reason": "moved on the graph"})
    response = client.post(url, data)

    # then only what the page offers (the position) is saved: kind and config stay as they were
    assert response.status_code == 302
    saved = Step.objects.get(pk=step.pk)
    assert (saved.kind, saved.config, saved.x) == ("condition", {"rule": "profile.plan == 'pro'"}, 40)


def test_admin_edit_requires_a_reason(client, people, live_workflow):
    draft = draft_of(live_workflow)
    login(client, people["editor"])
    url = reverse("admin:journeys_workflowversion_change", args=[draft.pk])
    data = _form_data(client.get(url))
    data["notes"] = "new notes"
    data["change_reason"] = ""
    response = client.post(url, data)
    assert response.status_code == 200 and b"This field is required" in response.content
    assert WorkflowVersion.objects.get(pk=draft.pk).notes != "new notes"


def test_change_behind_the_admins_back_is_caught_at_publish(people, live_workflow):
    draft = approved_draft(live_workflow, people)
    Step.objects.filter(version=draft, key="vip").update(config={"traits": {"segment": "gold"}})

    with pytest.raises(ValidationError, match="changed after approval"):
        version_publish(version=draft, actor=people["approver"], reason="go")

    draft.refresh_from_db()
    assert draft.state == "in_review"
    assert Workflow.objects.get(pk=live_workflow.pk).live_version != draft


def test_canary_share_is_accurate_and_deterministic():
    for percent in (5, 20, 50):
        share = sum(canary_bucket(7, c) < percent * 100 for c in range(20000)) / 20000
        assert abs(share - percent / 100) < 0.012, (percent, share)
    assert [canary_bucket(7, c) for c in range(50)] == [canary_bucket(7, c) for c in range(50)]
    assert [canary_bucket(7, c) for c in range(50)] != [canary_bucket(8, c) for c in range(50)]


def test_canary_takes_its_share_of_new_entries_and_rollback_restores(people, live_workflow, send, api,
                                                                    django_capture_on_commit_callbacks):
    v1 = live_workflow.live_version
    v2 = approved_draft(live_workflow, people)
    version_canary_start(version=v2, percent=20, actor=people["approver"], reason="try on 20%")
    v2.refresh_from_db()
    assert v2.stage == "canary" and v2.is_frozen

    # 300 sign-ups in one batch, as an SDK sends them (the engine's batch path splits them too)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("batch", {"batch": [{"type": "track", "userId": f"c{i}", "event": "Signed Up"}
                                                for i in range(300)]})
    assert response.status_code == 200, response.content

    by_version = {v: JourneyRun.objects.filter(version=v).count() for v in (v1, v2)}
    assert by_version[v1] + by_version[v2] == 300
    customers = Customer.objects.filter(external_id__startswith="c")  # the stable bucket of each: 20% of 300
    assert by_version[v2] == sum(canary_bucket(live_workflow.pk, c.pk) < 2000 for c in customers) > 0, by_version
    # deterministic per customer: a second entry lands on the same version
    first = {r.customer.external_id: r.version_id for r in JourneyRun.objects.select_related("customer")}
    for i in range(40):
        send(userId=f"c{i}", event="Signed Up")
    for run in JourneyRun.objects.select_related("customer").order_by("-id")[:40]:
        assert run.version_id == first[run.customer.external_id]

    # promote: everyone new goes to v2; runs already made stay on their version
    version_publish(version=v2, actor=people["approver"], reason="canary healthy")
    assert AuditEntry.objects.filter(action="promoted", version=v2).exists()
    before = JourneyRun.objects.filter(version=v1).count()
    for i in range(20):
        send(userId=f"n{i}", event="Signed Up")
    assert JourneyRun.objects.filter(version=v1).count() == before
    assert JourneyRun.objects.filter(version=v2, customer__external_id__startswith="n").count() == 20

    # one-click rollback: v1 live again, the index reloads, new entries go to v1
    restored = workflow_rollback(workflow=live_workflow, actor=people["approver"], reason="bad metrics")
    assert restored == v1
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.state, v2.state) == ("live", "retired")
    send(userId="after-rollback", event="Signed Up")
    assert JourneyRun.objects.get(customer__external_id="after-rollback").version == v1
    assert AuditEntry.objects.filter(action="rolled_back", reason="bad metrics").exists()


def test_a_second_rollback_goes_further_back_never_to_the_version_just_rolled_back_from(people, live_workflow,
                                                                                      client):
    v1 = live_workflow.live_version
    v2 = approved_draft(live_workflow, people)
    version_publish(version=v2, actor=people["approver"], reason="v2")
    v3 = approved_draft(live_workflow, people)
    version_publish(version=v3, actor=people["approver"], reason="v3")

    # through the admin action, which says which version went live
    login(client, people["approver"])
    url = reverse("admin:journeys_workflow_changelist")
    shown = re.search(rf'name="releases_{live_workflow.pk}" value="([^"]*)"', client.get(url).content.decode())
    page = client.post(url, {"action": "rollback", "_selected_action": [live_workflow.pk], "reason": "v3 is bad",
                             f"releases_{live_workflow.pk}": shown.group(1)}, follow=True)
    assert f"rolled back: v{v2.number} is live again" in page.content.decode()
    assert workflow_rollback(workflow=live_workflow, actor=people["approver"], reason="v2 too") == v1
    with pytest.raises(ValidationError, match="no earlier live version"):  # v2 and v3 were both rolled back from
        workflow_rollback(workflow=live_workflow, actor=people["approver"], reason="again")
    assert Workflow.objects.get(pk=live_workflow.pk).live_version == v1

    # a new version published over v1: rolling it back brings v1, the last good one, back
    v4 = approved_draft(live_workflow, people)
    version_publish(version=v4, actor=people["approver"], reason="v4")
    assert workflow_rollback(workflow=live_workflow, actor=people["approver"], reason="v4 is bad") == v1


def test_a_live_version_that_todays_checks_would_refuse_can_still_be_copied_and_is_reported(people, live_workflow):
    from journeys.services.workflows import version_new_draft, version_validate

    v1 = live_workflow.live_version
    # stored before the checks were stricter: a zero inactivity window, a step far off the canvas
    WorkflowVersion.objects.filter(pk=v1.pk).update(
        trigger_kind="inactivity", trigger_config={"followed_by": "Order Completed", "within": "0s"})
    Step.objects.filter(version=v1).update(x=150_000)

    draft = version_new_draft(version=WorkflowVersion.objects.get(pk=v1.pk), actor=people["editor"], reason="fix it")

    assert draft.trigger_config["within"] == "0s" and max(s.x for s in draft.steps.all()) == 100_000
    assert any("within" in error for error in version_validate(version=draft).errors)


def test_rollback_during_a_canary_stops_the_canary(people, live_workflow, send):
    v1 = live_workflow.live_version
    v2 = approved_draft(live_workflow, people)
    version_canary_start(version=v2, percent=50, actor=people["approver"], reason="half")
    version_canary_start(version=v2, percent=60, actor=people["approver"], reason="more")
    assert Workflow.objects.get(pk=live_workflow.pk).canary_percent == 60
    assert AuditEntry.objects.filter(action="canary_share_changed").exists()

    workflow_rollback(workflow=live_workflow, actor=people["approver"], reason="errors")

    workflow = Workflow.objects.get(pk=live_workflow.pk)
    assert workflow.canary_version is None and workflow.live_version == v1
    assert trigger_index(force=True).canary == {}
    for i in range(30):
        send(userId=f"x{i}", event="Signed Up")
    assert not JourneyRun.objects.filter(version=v2).exists()


def test_canary_needs_a_live_version_and_a_valid_share(people, units):
    from journeys.services.workflows import version_build, workflow_create
    from tests.journeys.test_governance_fixtures import SIGNUP

    workflow = workflow_create(name="New", business_unit=units["retention"])
    version = version_build(workflow=workflow, definition=SIGNUP)
    with pytest.raises(ValidationError, match="beside a live version"):
        version_canary_start(version=version, percent=10)
    version_publish(version=version, reason="first")
    draft = draft_of(Workflow.objects.get(pk=workflow.pk))
    with pytest.raises(ValidationError):
        version_canary_start(version=draft, percent=0)
    with pytest.raises(ValidationError):
        workflow_canary_stop(workflow=workflow)


def _form_data(response) -> dict:
    """The values of the admin change form as a browser would submit them."""
    import re
    from html import unescape

    html = response.content.decode()
    data = {}
    for match in re.finditer(r"<input[^>]*>", html):
        tag = match.group(0)
        name = re.search(r'name="([^"]+)"', tag)
        if not name:
            continue
        kind = re.search(r'type="([^"]+)"', tag)
        kind = kind.group(1) if kind else "text"
        value = re.search(r'value="([^"]*)"', tag)
        if kind == "checkbox":
            if "checked" in tag:
                data[name.group(1)] = "on"
            continue
        if kind in ("submit", "button"):
            continue
        data[name.group(1)] = unescape(value.group(1)) if value else ""
    for match in re.finditer(r'<textarea[^>]*name="([^"]+)"[^>]*>(.*?)</textarea>', html, re.S):
        data[match.group(1)] = unescape(match.group(2)).lstrip("\n")
    for match in re.finditer(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', html, re.S):
        selected = re.search(r'<option value="([^"]*)"[^>]*selected', match.group(2))
        data[match.group(1)] = selected.group(1) if selected else ""
    return data
