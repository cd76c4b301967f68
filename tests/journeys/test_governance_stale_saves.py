"""Saves from the admin that race a governed action: a version page posted after (or while) the
version was published, a workflow page posted while the workflow was paused and a new version
published. The save never undoes the action; a version no longer editable is refused, saying so."""

from __future__ import annotations

import threading

import pytest
from django.contrib.messages import get_messages
from django.db import transaction
from django.test import Client
from django.urls import reverse

from journeys.models import AuditEntry, Workflow, WorkflowVersion
from journeys.services import governance as gov
from journeys.services.workflows import version_approve, version_publish, version_submit, workflow_save
from tests.factories import in_a_thread, lock_waiters
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import admin_form_data, draft_of, login
from tests.marks import postgres_test

CHANGED_MEANWHILE = "changed by someone else meanwhile (it is now live): reload the page; nothing was saved"


def _approved(workflow, people):
    """A draft of `workflow` proposed by the editor and approved by the approver."""
    draft = draft_of(workflow, actor=people["editor"], entry_rule="profile.ltv >= 0")
    version_submit(version=draft, actor=people["editor"], summary="only customers with an ltv")
    version_approve(version=draft, actor=people["approver"], comment="fine")
    return WorkflowVersion.objects.get(pk=draft.pk)


def _version_page_post(client, version, **changes):
    url = reverse("admin:journeys_workflowversion_change", args=[version.pk])
    return url, admin_form_data(client.get(url), **changes)


def _post_in_a_thread(client, url, data) -> tuple[threading.Thread, list]:
    """The request on its own connection (a second browser session), started now."""
    return in_a_thread(lambda: client.post(url, data))


def _assert_published_and_untouched(version, workflow, old_live, cooldown):
    version.refresh_from_db()
    workflow.refresh_from_db()
    old_live.refresh_from_db()
    assert (version.state, version.reentry_cooldown_s) == ("live", cooldown)
    assert version.frozen_at is not None and version.published_at is not None
    assert workflow.live_version_id == version.pk and old_live.state == "retired"
    assert not AuditEntry.objects.filter(version=version, action="version_edited").exists()


@pytest.mark.django_db
def test_a_version_page_posted_after_the_version_was_published_is_refused_saying_so(client, people, live_workflow):
    # given an approved version whose page the editor opened
    v1 = live_workflow.live_version
    version = _approved(live_workflow, people)
    login(client, people["editor"])
    url, data = _version_page_post(client, version, reentry_cooldown_s="7", change_reason="shorter cooldown")

    # when the approver publishes it, and then the editor saves the page
    version_publish(version=version, actor=people["approver"], reason="go")
    response = client.post(url, data)

    # then nothing is saved, and the editor is told why (not a bare 403)
    assert response.status_code == 302 and response.url == url
    assert [m.message for m in get_messages(response.wsgi_request)] == [f"v{version.number} {CHANGED_MEANWHILE}"]
    _assert_published_and_untouched(version, live_workflow, v1, cooldown=0)


@postgres_test("a publish committing while the save waits for the version's row")
def test_a_version_published_while_its_page_is_being_saved_stays_published(people, live_workflow):
    # given an approved version whose page the editor opened and posts
    v1 = live_workflow.live_version
    version = _approved(live_workflow, people)
    client = login(Client(), people["editor"])
    url, data = _version_page_post(client, version, reentry_cooldown_s="7", change_reason="shorter cooldown")

    # when the approver's publish commits while the editor's save is under way (it read the version
    # as approved, and waits for the row the publish holds)
    with transaction.atomic():
        version_publish(version=version, actor=people["approver"], reason="go")
        thread, answers = _post_in_a_thread(client, url, data)
        assert lock_waiters()
    thread.join(60)

    # then the save is refused with the reason, and the version stays live and frozen, the live
    # pointer on it, with no edit in its audit log
    assert len(answers) == 1 and not isinstance(answers[0], Exception), answers
    response = answers[0]
    assert response.status_code == 302 and response.url == url
    assert [m.message for m in get_messages(response.wsgi_request)] == [f"v{version.number} {CHANGED_MEANWHILE}"]
    _assert_published_and_untouched(version, live_workflow, v1, cooldown=0)


@pytest.mark.django_db
def test_a_workflow_save_from_a_stale_copy_keeps_a_pause_and_a_publish_made_meanwhile(people, live_workflow):
    # given the workflow as an ops admin's form read it
    stale = Workflow.objects.get(pk=live_workflow.pk)
    version = _approved(live_workflow, people)

    # when it is paused and a new version is published, and then the form's change is saved
    gov.workflow_pause_set(workflow=live_workflow, paused=True, actor=people["approver"], reason="outage")
    version_publish(version=version, actor=people["approver"], reason="go")
    stale.description = "typo fixed"
    workflow_save(workflow=stale, actor=people["ops"], reason="typo")

    # then the description changed and nothing else: still paused, the new version live, and the
    # audit record of the edit names only the description
    workflow = Workflow.objects.get(pk=live_workflow.pk)
    assert (workflow.description, workflow.status, workflow.live_version_id) == ("typo fixed", "paused", version.pk)
    edit = AuditEntry.objects.get(action="workflow_edited", workflow=workflow)
    assert (edit.actor, edit.reason, edit.data) == (people["ops"], "typo", {"fields": ["description"]})


@postgres_test("a pause and a publish committing while the save waits for the workflow's row")
def test_a_workflow_paused_and_published_while_its_page_is_being_saved_stays_so(people, live_workflow):
    # given a new approved version, and the workflow's page an ops admin opened and posts
    v1 = live_workflow.live_version
    version = _approved(live_workflow, people)
    client = login(Client(), people["ops"])
    url = reverse("admin:journeys_workflow_change", args=[live_workflow.pk])
    data = admin_form_data(client.get(url), description="typo fixed", change_reason="typo")

    # when another session pauses the workflow for an outage and the approver publishes the new
    # version, committing while the save is under way (it read the workflow as active on v1)
    with transaction.atomic():
        gov.workflow_pause_set(workflow=live_workflow, paused=True, actor=people["approver"], reason="outage")
        version_publish(version=version, actor=people["approver"], reason="go")
        thread, answers = _post_in_a_thread(client, url, data)
        assert lock_waiters()
    thread.join(60)

    # then the description is saved, the pause and the live pointer stay, and the edit's audit
    # record says what it changed (nothing hidden)
    assert len(answers) == 1 and not isinstance(answers[0], Exception), answers
    assert answers[0].status_code == 302, answers[0].content[:2000]
    workflow = Workflow.objects.get(pk=live_workflow.pk)
    assert (workflow.description, workflow.status, workflow.live_version_id) == ("typo fixed", "paused", version.pk)
    assert WorkflowVersion.objects.get(pk=v1.pk).state == "retired"
    edit = AuditEntry.objects.get(action="workflow_edited", workflow=workflow)
    assert (edit.actor, edit.data) == (people["ops"], {"fields": ["description"]})
    assert workflow.history.latest("history_date").status == "paused"
