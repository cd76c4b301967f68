"""Four eyes: nobody who wrote a version (built it, edited it by any path, proposed it) approves it,
whether the edit was made in the draft or while the version was in review."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from journeys.services.workflows import step_token
from journeys.errors import PermissionDenied
from journeys.models import ChangeRequest, Edge, Step, WorkflowVersion
from journeys.services.workflows import version_approve, version_new_draft, version_publish, version_submit
from tests.journeys.test_governance_fixtures import *  # the fixtures: people, live_workflow
from tests.journeys.test_governance_fixtures import admin_form_data, draft_of, login

pytestmark = pytest.mark.django_db


def _proposed_by_editor(workflow, people):
    draft = version_new_draft(version=workflow.live_version, actor=people["editor"], reason="tweak the segment")
    request = version_submit(version=draft, actor=people["editor"], summary="tweak the segment")
    return draft, request


def _approve_on_the_review_page(client, request):
    url = reverse("admin:journeys_changerequest_change", args=[request.pk])
    return client.post(url, {"decision": "approve", "comment": "looks right"}, follow=True)


def test_editing_a_step_in_review_makes_ops_an_author_who_cannot_approve(client, people, live_workflow):
    # given a draft the editor proposed
    draft, request = _proposed_by_editor(live_workflow, people)
    step = draft.steps.get(key="check")
    login(client, people["ops"])

    # when ops changes one of its steps in the admin while it is in review, then tries to approve it
    edited = client.post(reverse("admin:journeys_step_change", args=[step.pk]),
                         {"key": "check", "rule": "profile.plan == 'business'",
                          "change_reason": "business plan instead", "_save": "Save",
                          "loaded": step_token(step=step)})
    answer = _approve_on_the_review_page(client, request)

    # then the edit is stored, but the approval is refused, saying why: ops is one of its authors
    assert edited.status_code == 302, edited.content[:2000]
    assert Step.objects.get(pk=step.pk).config == {"rule": "profile.plan == 'business'"}
    assert "someone other than its authors" in answer.content.decode()
    draft.refresh_from_db()
    assert draft.state == "in_review" and draft.approved_by is None
    assert ChangeRequest.objects.get(pk=request.pk).status == "open"

    # and a reviewer who wrote none of it still can
    version_approve(version=draft, actor=people["approver"], comment="fine")
    draft.refresh_from_db()
    assert draft.state == "approved"


def test_editing_an_edge_or_a_setting_on_the_version_page_counts_too(client, people, live_workflow):
    # given a proposed draft and its version page as ops's browser shows it
    draft, _ = _proposed_by_editor(live_workflow, people)
    login(client, people["ops"])
    url = reverse("admin:journeys_workflowversion_change", args=[draft.pk])
    data = admin_form_data(client.get(url))
    edge = Edge.objects.get(version=draft, outcome="yes")
    index = next(i for i in range(int(data["edges-TOTAL_FORMS"])) if str(data.get(f"edges-{i}-id")) == str(edge.pk))
    std = Step.objects.get(version=draft, key="std")

    # when ops re-routes an edge through the inline, then tries to approve
    saved = client.post(url, {**data, f"edges-{index}-target": str(std.pk), "change_reason": "everyone standard"})

    # then the approval is refused
    assert saved.status_code == 302, saved.context["adminform"].form.errors if saved.context else saved
    assert Edge.objects.get(pk=edge.pk).target_id == std.pk
    with pytest.raises(PermissionDenied, match="someone other than its authors"):
        version_approve(version=draft, actor=people["ops"], comment="ok")


def test_editing_the_draft_on_the_canvas_before_it_was_proposed_counts(client, people, live_workflow):
    # given a draft ops moved a step of on the canvas, then the editor proposed
    draft = version_new_draft(version=live_workflow.live_version, actor=people["editor"], reason="tidy")
    login(client, people["ops"])
    moved = client.post(reverse("console:canvas_command", args=[draft.pk]),
                        json.dumps({"op": "place", "positions": {"vip": [300, 40]}, "reason": "tidy the graph"}),
                        content_type="application/json")
    assert moved.status_code == 200, moved.content
    version_submit(version=draft, actor=people["editor"], summary="tidy")

    # when ops approves, then it is refused
    with pytest.raises(PermissionDenied, match="someone other than its authors"):
        version_approve(version=draft, actor=people["ops"], comment="ok")


def test_who_built_the_version_cannot_approve_it(people, live_workflow):
    # given a draft ops built (imported, copied) and the editor proposed unchanged
    draft = draft_of(live_workflow, actor=people["ops"], entry_rule="profile.ltv >= 0")
    version_submit(version=draft, actor=people["editor"], summary="ops's rule")

    # when ops approves, then it is refused
    with pytest.raises(PermissionDenied, match="someone other than its authors"):
        version_approve(version=draft, actor=people["ops"], comment="ok")


def test_a_copy_of_a_draft_keeps_its_authors_who_cannot_approve_the_copy(client, people, live_workflow):
    # given a draft ops made and changed a step of, which the editor copied into a new draft
    # ("Create a new draft from this version") and proposed unchanged
    draft = version_new_draft(version=live_workflow.live_version, actor=people["ops"], reason="longer wait")
    login(client, people["ops"])
    client.post(reverse("admin:journeys_step_change", args=[draft.steps.get(key="check").pk]),
                {"key": "check", "rule": "profile.plan == 'business'", "change_reason": "business plan",
                 "_save": "Save"})
    copy = version_new_draft(version=draft, actor=people["editor"], reason="take it over")
    copy_of_copy = version_new_draft(version=copy, actor=people["editor"], reason="again")
    request = version_submit(version=copy_of_copy, actor=people["editor"], summary="business plan")

    # when ops approves the copy on its review page
    page = _approve_on_the_review_page(client, request)

    # then it is refused: ops wrote that content; another reviewer may approve it
    assert "someone other than its authors" in page.content.decode()
    assert WorkflowVersion.objects.get(pk=copy_of_copy.pk).state == "in_review"
    version_approve(version=copy_of_copy, actor=people["approver"], comment="fine")


def test_a_copy_of_a_published_version_does_not_make_its_authors_authors_of_the_copy(people, live_workflow):
    # given a version ops wrote, reviewed by the approver and published, copied by the editor and proposed
    draft = draft_of(live_workflow, actor=people["ops"], entry_rule="profile.ltv >= 0")
    version_submit(version=draft, actor=people["editor"], summary="ops's rule")
    version_approve(version=draft, actor=people["approver"], comment="fine")
    live = version_publish(version=draft, actor=people["approver"], reason="go")
    copy = version_new_draft(version=live, actor=people["editor"], reason="next change")
    version_submit(version=copy, actor=people["editor"], summary="next change")

    # when ops reviews the copy, then ops may approve it (the content ops wrote went live reviewed)
    version_approve(version=copy, actor=people["ops"], comment="fine")


def test_a_reviewer_who_edits_an_approved_version_must_leave_the_new_approval_to_another(client, people,
                                                                                         live_workflow):
    # given a version the approver approved, which ops then changes (back to review)
    draft, _ = _proposed_by_editor(live_workflow, people)
    version_approve(version=draft, actor=people["approver"], comment="fine")
    step = draft.steps.get(key="check")
    login(client, people["ops"])
    client.post(reverse("admin:journeys_step_change", args=[step.pk]),
                {"key": "check", "rule": "profile.plan == 'business'", "change_reason": "business plan",
                 "_save": "Save", "loaded": step_token(step=step)})
    assert WorkflowVersion.objects.get(pk=draft.pk).state == "in_review"

    # when ops approves the new content, then it is refused; the approver, who wrote none of it, may
    with pytest.raises(PermissionDenied, match="someone other than its authors"):
        version_approve(version=draft, actor=people["ops"], comment="ok")
    version_approve(version=draft, actor=people["approver"], comment="business is fine")


def _approved_by_the_approver(workflow, people):
    draft, request = _proposed_by_editor(workflow, people)
    version_approve(version=draft, actor=people["approver"], comment="ok for this workflow")
    return WorkflowVersion.objects.get(pk=draft.pk), request


def test_an_approved_version_cannot_be_moved_to_another_workflow_or_renumbered_on_its_page(
        client, people, units, live_workflow):
    # given a version approved for Signup, and another workflow the editor may edit
    from journeys.services.workflows import version_build, version_publish, workflow_create
    from tests.journeys.test_governance_fixtures import SIGNUP

    other = workflow_create(name="Winback", business_unit=units["retention"])
    version_publish(version=version_build(workflow=other, definition=SIGNUP), reason="first")
    version, request = _approved_by_the_approver(live_workflow, people)
    login(client, people["editor"])
    url = reverse("admin:journeys_workflowversion_change", args=[version.pk])
    page = client.get(url)

    # then its page shows the workflow and the number read-only
    assert "workflow" not in page.context["adminform"].form.fields
    assert "number" not in page.context["adminform"].form.fields

    # when the editor posts another workflow and number anyway
    moved = client.post(url, admin_form_data(page, workflow=str(other.pk), number="50", change_reason="moving"))

    # then it is refused, naming the field, and the version stays where it was approved
    assert moved.status_code == 200
    assert "workflow: a version stays in its workflow under its number" in moved.content.decode()
    stored = WorkflowVersion.objects.get(pk=version.pk)
    assert (stored.workflow_id, stored.number, stored.state) == (live_workflow.pk, version.number, "approved")


def test_an_approval_does_not_carry_over_to_another_workflow(people, units, live_workflow):
    # given a version approved for Signup that was moved to another workflow behind the admin's back
    from django.core.exceptions import ValidationError

    from journeys.services.workflows import version_build, version_publish, workflow_create
    from tests.journeys.test_governance_fixtures import SIGNUP

    other = workflow_create(name="Winback", business_unit=units["retention"])
    version_publish(version=version_build(workflow=other, definition=SIGNUP), reason="first")
    version, _ = _approved_by_the_approver(live_workflow, people)
    WorkflowVersion.objects.filter(pk=version.pk).update(workflow=other, number=50)

    # when the approver publishes it there, then it is refused: it needs a review in that workflow
    with pytest.raises(ValidationError, match="approved for workflow 'Signup', not 'Winback'"):
        version_publish(version=WorkflowVersion.objects.get(pk=version.pk), actor=people["approver"], reason="go")
    other.refresh_from_db()
    assert other.live_version.number == 1
