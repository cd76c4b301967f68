"""Resolving a case emits `Case Resolved`; a workflow follows up (a CSAT survey two days later).
An agent can also enrol the customer in a follow-up workflow from the case page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.errors import CaseError
from agents.services.cases import case_reopen, case_resolve
from journeys.engine.scheduler import runs_wake_due
from journeys.models import BusinessUnit, Event, JourneyRun
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.agents.conftest import open_case
from tests.agents.factories import AgentFactory, TeamFactory
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


def csat_workflow(trigger_event="Case Resolved", name="CSAT survey"):
    from channels_app.models import Channel, MessageTemplate

    Channel.objects.get_or_create(name="email", defaults={"kind": "email"})
    MessageTemplate.objects.get_or_create(name="csat", defaults={
        "subject": "How did we do, {{ profile.first_name }}?",
        "body": "Please rate the help you got from our support team."})
    unit, _ = BusinessUnit.objects.get_or_create(slug="support", defaults={"name": "Support"})
    definition = {
        "trigger_event": trigger_event, "reentry_policy": "always",
        "steps": [{"key": "wait", "kind": "delay", "config": {"duration": "2d"}},
                  {"key": "survey", "kind": "send_message", "config": {"channel": "email", "template": "csat"}}],
        "edges": [{"from": "wait", "outcome": "next", "to": "survey"}],
    }
    if trigger_event is None:
        definition["trigger_event"] = "Never Sent"
    return version_publish(version=version_build(workflow=workflow_create(name=name, business_unit=unit), definition=definition))


@pytest.fixture
def assigned(django_capture_on_commit_callbacks):
    agent = AgentFactory(team=TeamFactory(categories=["billing"]), skills={"billing": 3})
    customer = CustomerFactory(email="ada@example.com", traits={"first_name": "Ada"})
    case = open_case(customer=customer, capture=django_capture_on_commit_callbacks)
    assert case.assigned_agent == agent
    return agent, case


def test_resolving_triggers_the_csat_workflow_two_days_later(client, assigned, django_capture_on_commit_callbacks):
    from channels_app.models import Delivery

    csat_workflow()
    agent, case = assigned
    client.force_login(agent.user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("agents:resolve", args=[case.pk]), {"code": "refunded"})
    assert response.status_code == 302

    event = Event.objects.get(name="Case Resolved")
    assert event.customer == case.customer and event.status == "processed"
    assert event.properties["case_id"] == case.pk and event.properties["resolution_code"] == "refunded"
    run = JourneyRun.objects.get(workflow__name="CSAT survey")
    assert run.status == "waiting" and Delivery.objects.count() == 0

    with django_capture_on_commit_callbacks(execute=True):
        runs_wake_due(now=timezone.now() + timedelta(days=2, minutes=1))
    survey = Delivery.objects.get()
    assert (survey.to, survey.subject) == ("ada@example.com", "How did we do, Ada?")
    assert survey.body == "Please rate the help you got from our support team."


def test_resolving_twice_is_refused_and_a_reopened_case_resolves_with_a_new_event(assigned, django_capture_on_commit_callbacks):
    agent, case = assigned
    with django_capture_on_commit_callbacks(execute=True):
        case_resolve(case=case, actor=agent.user, code="fixed")
    with pytest.raises(CaseError):
        case_resolve(case=case, actor=agent.user, code="fixed")
    with django_capture_on_commit_callbacks(execute=True):
        case_reopen(case=case, actor=agent.user, reason="still broken")
    case.refresh_from_db()
    assert (case.status, case.assigned_agent, case.reopen_count) == ("assigned", agent, 1)
    with django_capture_on_commit_callbacks(execute=True):
        case_resolve(case=case, actor=agent.user, code="replaced")
    assert sorted(Event.objects.filter(name="Case Resolved").values_list("message_id", flat=True)) == [
        f"case-resolved:{case.pk}:0", f"case-resolved:{case.pk}:1"]


def test_an_agent_enrols_the_customer_in_a_follow_up_workflow_from_the_case_page(client, assigned, django_capture_on_commit_callbacks):
    version = csat_workflow(trigger_event=None, name="Win-back call")
    agent, case = assigned
    client.force_login(agent.user)
    page = client.get(reverse("agents:case", args=[case.pk])).content.decode()
    assert "Win-back call" in page

    url = reverse("agents:followup", args=[case.pk])
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(url, {"workflow": version.workflow_id}, follow=True)
        second = client.post(url, {"workflow": version.workflow_id}, follow=True)
    assert "Enrolled in Win-back call." in first.content.decode()
    assert "did not enrol" in second.content.decode()  # once per case and workflow
    run = JourneyRun.objects.get(workflow=version.workflow)
    assert run.customer == case.customer and run.trigger_key == f"case:{case.pk}"
    assert case.entries.filter(kind="follow_up").count() == 2


def test_the_customer_writing_again_soon_after_resolution_reopens_the_case(api, django_capture_on_commit_callbacks):
    from journeys.models import Customer
    from tests.agents.test_escalate_step import ANGRY, THRESHOLDS, publish

    agent = AgentFactory(team=TeamFactory(categories=["billing"]), skills={"billing": 3})
    publish(THRESHOLDS)
    with django_capture_on_commit_callbacks(execute=True):
        api.post("track", {"userId": "back", "event": "Support Message", "properties": {"text": ANGRY}})
    case = Customer.objects.get(external_id="back").cases.get()
    with django_capture_on_commit_callbacks(execute=True):
        case_resolve(case=case, actor=agent.user, code="fixed")
        api.post("track", {"userId": "back", "event": "Support Message", "properties": {"text": "It broke again"}})

    case.refresh_from_db()
    assert (case.status, case.assigned_agent, case.reopen_count) == ("assigned", agent, 1)
    assert case.entries.filter(kind="inbound").last().body == "It broke again"


def test_a_closed_case_stays_closed_and_the_page_offers_reopen_only_when_resolved(client, assigned, django_capture_on_commit_callbacks):
    agent, case = assigned
    client.force_login(agent.user)
    with django_capture_on_commit_callbacks(execute=True):
        case_resolve(case=case, actor=agent.user, code="fixed")
    page = client.get(reverse("agents:case", args=[case.pk])).content.decode()
    assert 'id="close"' in page and 'id="reopen"' in page

    client.post(reverse("agents:close", args=[case.pk]))
    case.refresh_from_db()
    assert case.status == "closed" and case.closed_at
    response = client.post(reverse("agents:close", args=[case.pk]), follow=True)
    assert "only resolved cases can be closed" in response.content.decode()
