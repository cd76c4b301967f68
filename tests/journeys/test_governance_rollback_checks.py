"""Rollback and stop-canary act on what the page showed, and a rollback makes live only a version
that passes the checks publishing makes."""

from __future__ import annotations

import re

import pytest
from django.contrib.messages import get_messages
from django.core.exceptions import ValidationError
from django.urls import reverse

from journeys.models import AuditEntry, Workflow, WorkflowVersion
from journeys.services.workflows import (
    version_build,
    version_canary_start,
    version_publish,
    workflow_rollback,
)
from tests.channels_app.factories import ChannelFactory, TemplateFactory
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import SIGNUP, draft_of, login

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:journeys_workflow_changelist"


def _released(workflow, **changes) -> WorkflowVersion:
    """A new version of `workflow` published (by the system)."""
    return version_publish(version=draft_of(workflow, **changes), reason="release")


def _list_page(client, workflow) -> dict:
    """The workflow list as a browser shows it: what the row of `workflow` posts with an action."""
    html = client.get(reverse(CHANGELIST)).content.decode()
    token = re.search(rf'name="releases_{workflow.pk}" value="([^"]*)"', html)
    return {"_selected_action": [workflow.pk], **({f"releases_{workflow.pk}": token.group(1)} if token else {})}


def _act(client, action, row, reason) -> list[str]:
    response = client.post(reverse(CHANGELIST), {**row, "action": action, "reason": reason}, follow=True)
    assert response.status_code == 200
    return [m.message for m in get_messages(response.wsgi_request)]


def test_two_rollbacks_from_pages_showing_the_same_bad_release_take_out_only_that_release(client, people,
                                                                                           live_workflow):
    # given good1 (v1), good2 and bad released in turn, and two approvers looking at bad live
    good2 = _released(live_workflow, entry_rule="profile.ltv >= 0")
    bad = _released(live_workflow, entry_rule="profile.ltv >= 1")
    other = login(type(client)(), people["approver2"])
    first_row, second_row = _list_page(login(client, people["approver"]), live_workflow), _list_page(other,
                                                                                                       live_workflow)

    # when both press Roll back
    first = _act(client, "rollback", first_row, "bad release")
    second = _act(other, "rollback", second_row, "bad release")

    # then the first brings good2 back; the second is refused, saying what is live now: good2 stays
    assert first == [f"Signup: rolled back: v{good2.number} is live again"]
    assert second == [f"Signup: Signup changed since this page was opened: it showed v{bad.number} live, no canary, "
                      f"now it has v{good2.number} live, no canary. Nothing was done: reload the page and look "
                      "again before you roll back"]
    assert Workflow.objects.get(pk=live_workflow.pk).live_version_id == good2.pk
    assert AuditEntry.objects.filter(action="rolled_back").count() == 1


def test_a_rollback_from_a_page_opened_before_a_fix_went_live_does_not_bring_the_bad_release_back(people,
                                                                                                   live_workflow):
    from journeys.services.workflows import releases_token

    # given the bad release live, as an approver's page shows it
    bad = _released(live_workflow, entry_rule="profile.ltv >= 1")
    shown = releases_token(workflow=Workflow.objects.get(pk=live_workflow.pk))

    # when another approver publishes a fix, and then the first one's rollback arrives
    fix = _released(live_workflow, entry_rule="profile.ltv >= 2")
    with pytest.raises(ValidationError) as refused:
        workflow_rollback(workflow=live_workflow, actor=people["approver"], reason="bad release", loaded=shown)

    # then it is refused, naming both; the fix stays live
    assert f"it showed v{bad.number} live, no canary, now it has v{fix.number} live" in str(refused.value)
    assert Workflow.objects.get(pk=live_workflow.pk).live_version_id == fix.pk


def test_stop_canary_from_a_page_showing_another_canary_is_refused(client, people, live_workflow):
    # given canary A at 10%, as an approver's list shows it
    canary_a = version_canary_start(version=draft_of(live_workflow, entry_rule="profile.ltv >= 1"), percent=10,
                                    reason="try A")
    row = _list_page(login(client, people["approver"]), live_workflow)

    # when another approver replaces it with canary B, and then the first one's Stop canary arrives
    canary_b = version_canary_start(version=draft_of(live_workflow, entry_rule="profile.ltv >= 2"), percent=50,
                                    reason="try B")
    said = _act(client, "stop_canary", row, "stop canary A")

    # then nothing is stopped: B still runs, and the page says why
    assert len(said) == 1 and f"it showed v1 live, canary v{canary_a.number}, now it has v1 live, canary " \
                              f"v{canary_b.number}" in said[0]
    assert Workflow.objects.get(pk=live_workflow.pk).canary_version_id == canary_b.pk

    # and from a page showing B, it stops
    assert _act(client, "stop_canary", _list_page(client, live_workflow), "stop canary B") == [
        "Signup: canary stopped"]
    assert Workflow.objects.get(pk=live_workflow.pk).canary_version_id is None


def test_a_rollback_posted_without_saying_what_the_page_showed_is_refused(client, people, live_workflow):
    v2 = _released(live_workflow, entry_rule="profile.ltv >= 1")
    login(client, people["approver"])
    said = _act(client, "rollback", {"_selected_action": [live_workflow.pk]}, "bad release")
    assert said == ["Signup: this page does not say which live version it showed: reload it, then try again"]
    assert Workflow.objects.get(pk=live_workflow.pk).live_version_id == v2.pk


def test_a_rollback_to_a_version_whose_template_was_deleted_is_refused_naming_it(client, people, live_workflow):
    # given v2 sending template qa-tmpl, replaced by v3 which does not; then the template is deleted
    channel, template = ChannelFactory(name="email"), TemplateFactory(name="qa-tmpl")
    mail = {**SIGNUP, "steps": [{"key": "mail", "kind": "send_message",
                                 "config": {"channel": channel.name, "template": template.name}}], "edges": []}
    v2 = version_publish(version=version_build(workflow=live_workflow, definition=mail), reason="mail")
    v3 = version_publish(version=version_build(workflow=live_workflow, definition=SIGNUP), reason="no mail")
    template.delete()

    # when an approver rolls back (v2 would be live again)
    row = _list_page(login(client, people["approver"]), live_workflow)
    said = _act(client, "rollback", row, "v3 is bad")

    # then it is refused, naming what is wrong with v2; v3 stays live
    assert said == [f"Signup: v{v2.number} cannot be live again: it no longer passes the checks publishing makes "
                    "(step mail: template: no template named 'qa-tmpl'). Nothing was rolled back: fix it in a new "
                    f"draft from v{v2.number} and publish that, or publish another version"]
    workflow = Workflow.objects.get(pk=live_workflow.pk)
    assert workflow.live_version_id == v3.pk
    assert WorkflowVersion.objects.get(pk=v2.pk).state == "retired"
    assert not AuditEntry.objects.filter(action="rolled_back").exists()
