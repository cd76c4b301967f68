"""Change requests: validation report, dry-run replay of real events (no side effects), diff, review page."""

from __future__ import annotations

import html

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from config.demo import demo_load
from journeys.engine.registry import STEP_KINDS
from journeys.models import BusinessUnit, Customer, Event, JourneyRun, StepExecution, Workflow
from journeys.services.governance import business_unit_grant_editor, version_diff, version_replay
from journeys.services.workflows import (
    version_approve,
    version_build,
    version_submit,
    version_validate,
    workflow_create,
)
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import draft_of, edges, login, steps

pytestmark = pytest.mark.django_db


SUPPORT = {
    "trigger_event": "Help Requested", "reentry_policy": "always",
    "steps": [
        {"key": "triage", "kind": "condition",
         "config": {"rule": "event.properties.sentiment < -0.3 or profile.ltv >= 1000"}},
        {"key": "flag", "kind": "update_profile", "config": {"traits": {"needs_agent": True}}},
        {"key": "ack", "kind": "send_message", "config": {"channel": "email", "template": "support-ack"}},
    ],
    "edges": [{"from": "triage", "outcome": "yes", "to": "flag"}, {"from": "flag", "outcome": "next", "to": "ack"}],
}


@pytest.fixture
def demo(people):
    """The demo's customers, channels and templates, and a support workflow of our own (live v1)."""
    from journeys.services.workflows import version_publish

    demo_load()
    unit = BusinessUnit.objects.get(slug="support")
    business_unit_grant_editor(unit=unit, user=people["editor"])
    workflow = workflow_create(name="Support triage", business_unit=unit)
    version_publish(version=version_build(workflow=workflow, definition=SUPPORT), reason="first")
    return Workflow.objects.get(pk=workflow.pk)


def _deliveries() -> int:
    from django.apps import apps

    return apps.get_model("channels_app", "Delivery").objects.count()


def _support_messages(send):
    send(userId="u-alan", event="Help Requested", properties={"sentiment": 0.5})   # ltv 1500: escalated
    send(userId="u-grace", event="Help Requested", properties={"sentiment": -0.8})  # angry: escalated
    send(userId="u-ada", event="Help Requested", properties={"sentiment": 0.2})    # ltv 820, calm: not


BROADER = "event.properties.sentiment < -0.3 or profile.ltv >= 500"


def _broader_draft(workflow, actor):
    from journeys.services.workflows import version_definition

    definition = version_definition(version=workflow.live_version)
    for step in definition["steps"]:
        if step["key"] == "triage":
            step["config"] = {"rule": BROADER}
    return version_build(workflow=workflow, definition={**definition, "reason": "broader triage"}, actor=actor)


def test_dry_run_replays_recent_real_events_with_no_side_effects(people, demo, send):
    _support_messages(send)
    counts = (JourneyRun.objects.count(), StepExecution.objects.count(), Event.objects.count(), _deliveries())
    traits = {c.pk: dict(c.traits) for c in Customer.objects.all()}
    draft = _broader_draft(demo, people["editor"])

    request = version_submit(version=draft, actor=people["editor"], summary="escalate valuable customers sooner")

    report = request.dry_run
    assert report["events"] == 3 and report["customers"] == 3
    assert report["entered"] == {"proposed": 3, "live": 3}
    assert report["messages"] == {"proposed": {"support-ack": 3}, "live": {"support-ack": 2}}
    assert report["reach"]["proposed"]["flag"] == 3 and report["reach"]["live"]["flag"] == 2
    assert report["differs"] == 1
    ada = next(r for r in report["rows"] if r["customer"] == "u-ada")
    assert ada["proposed"]["steps"] == ["triage", "flag", "ack"] and ada["live"]["steps"] == ["triage"]
    # nothing happened: no run, execution, event or delivery, no trait written
    assert (JourneyRun.objects.count(), StepExecution.objects.count(), Event.objects.count(), _deliveries()) == counts
    assert {c.pk: dict(c.traits) for c in Customer.objects.all()} == traits


def test_replay_ignores_old_events(people, demo, send):
    _support_messages(send)
    from datetime import timedelta

    from django.utils import timezone

    Event.objects.update(timestamp=timezone.now() - timedelta(days=30))
    report = version_replay(proposed=_broader_draft(demo, None), baseline=demo.live_version, days=7)
    assert report["events"] == 0


def test_validation_report_errors_and_warnings(units):
    workflow = workflow_create(name="Messy", business_unit=units["retention"])
    version = version_build(workflow=workflow, definition={
        "trigger_event": "Visit",
        "steps": steps(
            ("a", "condition", {"rule": "profile.lifetime_valu > 3 and event.properties.total > 1"}),
            ("b", "delay", {"duration": "1h"}),
            ("c", "goal", {}),
            ("orphan", "goal", {}),
            ("loop1", "condition", {"rule": "true"}),
        ),
        "edges": edges(("a", "yes", "b"), ("b", "next", "c"), ("a", "no", "loop1"), ("loop1", "yes", "a")),
    })
    report = version_validate(version=version)
    text = "\n".join(report.errors)
    assert "orphan cannot be reached" in text
    assert "cycle without a delay" in text
    warnings = "\n".join(report.warnings)
    assert "profile.lifetime_valu" in warnings and "unknown attribute" in warnings
    assert "loop1: outcome(s) no lead nowhere" in warnings

    with pytest.raises(ValidationError) as exc:
        version_submit(version=version, actor=None, summary="please")
    assert any("cycle" in m for m in exc.value.messages)
    version.refresh_from_db()
    assert version.state == "draft"


def test_validation_reports_missing_templates_and_channels(demo):
    from journeys.models import Step

    draft = draft_of(demo)
    Step.objects.filter(version=draft, key="ack").update(config={"channel": "pigeon", "template": "support-ack"})
    report = version_validate(version=draft)
    assert any("ack" in e and "pigeon" in e for e in report.errors), report.errors


@pytest.mark.skipif("experiment_split" not in STEP_KINDS, reason="the experiments app has not registered experiment_split yet")
def test_validation_reports_experiment_without_control(units):
    from django.apps import apps

    experiment = apps.get_model("experiments", "Experiment").objects.create(key="subject-lines", name="Subject lines")
    for name in ("a", "b"):
        experiment.arms.create(name=name)  # neither is the control
    workflow = workflow_create(name="Exp", business_unit=units["retention"])
    with pytest.raises(ValidationError, match="control arm"):
        version_build(workflow=workflow, definition={
            "trigger_event": "Visit",
            "steps": steps(("x", "experiment_split", {"experiment": "subject-lines", "arms": ["a", "b"]})),
        })


def test_diff_names_settings_steps_edges_rules_and_templates(demo):
    from journeys.services.workflows import version_definition

    definition = version_definition(version=demo.live_version)
    definition["steps"] = [s for s in definition["steps"] if s["key"] != "flag"] + [
        {"key": "sms", "kind": "send_message", "config": {"channel": "sms", "template": "cart-discount-sms"}}]
    for step in definition["steps"]:
        if step["key"] == "triage":
            step["config"] = {"rule": BROADER}
        if step["key"] == "ack":
            step["config"] = {"channel": "email", "template": "cart-reminder"}
    definition["edges"] = [{"from": "triage", "outcome": "yes", "to": "ack"}, {"from": "ack", "outcome": "next", "to": "sms"}]
    definition["trigger_config"] = {"filter": "event.properties.sentiment < 1"}
    new = version_build(workflow=demo, definition=definition)

    diff = version_diff(old=demo.live_version, new=new)

    assert {"field": "trigger_config.filter", "old": None, "new": "event.properties.sentiment < 1"} in diff["settings"]
    assert [s["key"] for s in diff["steps_added"]] == ["sms"]
    assert [s["key"] for s in diff["steps_removed"]] == ["flag"]
    assert {c["key"] for c in diff["steps_changed"]} == {"triage", "ack"}
    assert {"from": "triage", "outcome": "yes", "to": "ack"} in diff["edges_added"]
    assert {"from": "flag", "outcome": "next", "to": "ack"} in diff["edges_removed"]
    assert {"where": "step triage", "old": "event.properties.sentiment < -0.3 or profile.ltv >= 1000", "new": BROADER} in diff["rules"]
    assert diff["templates_added"] == ["cart-discount-sms", "cart-reminder"] and diff["templates_removed"] == ["support-ack"]
    assert version_diff(old=new, new=new)["empty"]


def test_diff_page_compares_any_two_versions(client, people, demo):
    v2 = _broader_draft(demo, None)
    v3 = draft_of(demo)
    login(client, people["approver"])
    url = reverse("admin:journeys_workflow_diff", args=[demo.pk])
    response = client.get(url, {"a": demo.live_version.pk, "b": v2.pk})
    assert response.status_code == 200
    assert b"changed step <b>triage</b>" in response.content
    assert html.escape(BROADER).encode() in response.content
    same = client.get(url, {"a": demo.live_version.pk, "b": v3.pk})
    assert b"do the same thing" in same.content
    login(client, people["agent"])
    assert client.get(url).status_code == 403


def test_review_page_shows_diff_validation_and_dry_run_then_approve_and_publish(client, people, demo, send):
    _support_messages(send)
    draft = _broader_draft(demo, people["editor"])
    request = version_submit(version=draft, actor=people["editor"], summary="escalate valuable customers sooner")
    login(client, people["approver"])
    url = reverse("admin:journeys_changerequest_change", args=[request.pk])

    page = client.get(url)

    assert page.status_code == 200
    body = page.content.decode()
    assert "changed step <b>triage</b>" in body
    assert "OK: no errors or warnings." in body or "warning:" in body
    assert "<b>1</b> would be handled differently" in body
    assert "support-ack: 3" in body and "support-ack: 2" in body

    response = client.post(url, {"decision": "approve", "comment": "good idea", "fingerprint": page.context["fingerprint"]})
    assert response.status_code == 302
    draft.refresh_from_db()
    assert draft.state == "approved"
    response = client.post(url, {"decision": "publish", "comment": ""})  # a reason is required
    draft.refresh_from_db()
    assert draft.state == "approved"
    client.post(url, {"decision": "publish", "comment": "ship it"})
    draft.refresh_from_db()
    assert draft.state == "live"
    thread = client.get(url).content.decode()
    assert "approved: good idea" in thread and "published: ship it" in thread


def test_editor_sees_the_review_but_cannot_decide(client, people, demo):
    draft = _broader_draft(demo, people["editor"])
    request = version_submit(version=draft, actor=people["editor"], summary="s")
    login(client, people["editor"])
    url = reverse("admin:journeys_changerequest_change", args=[request.pk])
    page = client.get(url)
    assert page.status_code == 200 and b"approve-button" not in page.content
    client.post(url, {"decision": "approve", "comment": "self-service"})
    draft.refresh_from_db()
    assert draft.state == "in_review"
    client.post(url, {"decision": "comment", "comment": "fixed the typo"})
    assert "fixed the typo" in client.get(url).content.decode()
    login(client, people["analyst"])
    assert client.get(url).status_code == 200  # read-only reports
    login(client, people["other_editor"])
    assert client.get(url).status_code == 200  # other_editor owns Support in these fixtures


def test_approval_is_refused_when_the_version_changed_since_the_page_was_loaded(people, demo):
    draft = _broader_draft(demo, people["editor"])
    version_submit(version=draft, actor=people["editor"], summary="s")
    with pytest.raises(ValidationError, match="changed while you were reviewing"):
        version_approve(version=draft, actor=people["approver"], comment="ok", expected_fingerprint="0" * 64)


def test_reports_follow_edits_made_during_review(client, people, demo, send):
    from journeys.models import Step
    from journeys.services.workflows import version_note_changed

    _support_messages(send)
    draft = _broader_draft(demo, people["editor"])
    request = version_submit(version=draft, actor=people["editor"], summary="broader")
    assert request.dry_run["differs"] == 1
    Step.objects.filter(version=draft, key="triage").update(config={"rule": "profile.ltv >= 0"})

    version_note_changed(version=draft, actor=people["editor"], reason="everyone gets an agent")

    request.refresh_from_db()
    assert request.dry_run["messages"]["proposed"] == {"support-ack": 3}
    assert request.dry_run["differs"] == 1  # ada again; the others were escalated already
    login(client, people["approver"])
    url = reverse("admin:journeys_changerequest_change", args=[request.pk])
    assert client.post(url, {"decision": "refresh", "comment": ""}).status_code == 302
    assert request.entries.filter(action="reports_refreshed", actor=people["approver"]).exists()


@pytest.mark.parametrize("percent", ["150", "0", "-5", "abc"])
def test_a_canary_share_out_of_range_on_the_review_page_is_shown_with_its_error(client, people, demo, percent):
    # given a version approved on its review page
    from journeys.models import AuditEntry, ChangeRequest

    draft = _broader_draft(demo, people["editor"])
    request = version_submit(version=draft, actor=people["editor"], summary="escalate valuable customers sooner")
    version_approve(version=draft, actor=people["approver"], comment="fine")
    login(client, people["approver"])
    url = reverse("admin:journeys_changerequest_change", args=[request.pk])

    # when the approver stages it as a canary with a share that is not 1 to 99
    response = client.post(url, {"decision": "canary", "percent": percent, "comment": "stage it"})

    # then the page comes back with the error next to what was typed, and nothing is staged
    page = html.unescape(response.content.decode())
    assert response.status_code == 200
    assert "Canary %: a whole number from 1 to 99" in page
    assert f'name="percent" value="{percent}"' in page
    demo.refresh_from_db()
    assert demo.canary_version_id is None and demo.canary_percent == 0
    assert ChangeRequest.objects.get(pk=request.pk).status == "approved"
    assert not AuditEntry.objects.filter(action="canary_started").exists()
