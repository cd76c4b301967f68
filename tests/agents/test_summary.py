"""The prefilled case: summary of recent interactions, key facts, suggested replies."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.models import Case
from agents.selectors import case_suggested_replies, case_summary
from journeys.services.internal_events import event_record_internal
from tests.agents.conftest import open_case
from tests.agents.factories import AgentFactory, ReplyTemplateFactory, TeamFactory
from tests.agents.test_escalate_step import ANGRY, publish
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


def test_summary_shows_events_messages_opened_previous_cases_path_and_facts(api, django_capture_on_commit_callbacks):
    from channels_app.models import Channel, Delivery

    AgentFactory(team=TeamFactory(categories=["billing"]), skills={"billing": 3})
    publish({"sentiment_below": -0.3, "category": "billing"})
    with django_capture_on_commit_callbacks(execute=True):
        api.post("identify", {"userId": "ada", "traits": {"email": "ada@example.com", "first_name": "Ada",
                                                           "plan": "pro", "ltv": 820}})
        api.post("track", {"userId": "ada", "event": "Invoice Viewed", "properties": {"invoice": "INV-7"}})
    customer = Case._meta.get_field("customer").related_model.objects.get(external_id="ada")
    customer.first_seen = timezone.now() - timedelta(days=400)
    customer.save()
    email = Channel.objects.create(name="email", kind="email")
    sent = Delivery.objects.create(idempotency_key="d1", customer=customer, channel=email, to="ada@example.com",
                                   subject="Your invoice", status="sent")
    Delivery.objects.create(idempotency_key="d2", customer=customer, channel=email, to="ada@example.com",
                            subject="We miss you", status="sent")
    with django_capture_on_commit_callbacks(execute=True):
        event_record_internal(customer=customer, name="Email Opened", message_id=f"open:{sent.pk}")
    old = open_case(customer=customer, category="delivery", capture=django_capture_on_commit_callbacks)
    Case.objects.filter(pk=old.pk).update(status="resolved", resolution_code="replaced")
    with django_capture_on_commit_callbacks(execute=True):
        api.post("track", {"userId": "ada", "event": "Support Message", "properties": {"text": ANGRY}})
    case = Case.objects.get(category="billing")

    summary = case_summary(case=case)

    assert summary.facts["plan"] == "pro" and summary.facts["lifetime_value"] == 820
    assert summary.facts["tenure_days"] == 400 and summary.facts["name"] == "Ada"
    names = [e["name"] for e in summary.events]
    assert names.index("Support Message") < names.index("Invoice Viewed")  # newest first
    messages = {m["subject"]: m["opened"] for m in summary.messages}
    assert messages == {"Your invoice": True, "We miss you": False}
    assert summary.previous_cases == [{"id": old.pk, "subject": old.subject, "status": "Resolved",
                                       "resolution": "Replacement sent", "at": old.created_at}]
    assert summary.workflow == "Support triage"
    assert [(s["step"], s["outcome"]) for s in summary.journey_path][0] == ("escalate", "escalated")


def test_suggestions_match_category_and_intent_first_and_are_personalised():
    generic = ReplyTemplateFactory(name="generic", body="Hello {{ profile.first_name }}, thanks for writing.")
    ReplyTemplateFactory(name="other-category", category="hardware", body="About your device...")
    ReplyTemplateFactory(name="refund-any", intent="refund", body="Refund on its way, {{ profile.first_name }}.")
    exact = ReplyTemplateFactory(name="billing-refund", category="billing", intent="refund",
                                 body="{{ profile.first_name }}, your {{ profile.plan }} refund is approved.")
    ReplyTemplateFactory(name="german", category="billing", intent="refund", language="de", body="Hallo")
    case = open_case(customer=CustomerFactory(traits={"first_name": "Ada", "plan": "pro"}), intent="refund")

    suggestions = case_suggested_replies(case=case)

    assert [s.name for s in suggestions] == [exact.name, "refund-any", generic.name]
    assert suggestions[0].text == "Ada, your pro refund is approved."
    assert suggestions[0].why == "category billing, intent refund"


def test_suggestions_in_the_customers_language_when_there_are_some():
    ReplyTemplateFactory(name="en", category="billing", body="Hello")
    ReplyTemplateFactory(name="de", category="billing", language="de", body="Hallo {{ profile.first_name }}")
    case = open_case(customer=CustomerFactory(traits={"first_name": "Jo"}), language="de")
    assert [s.text for s in case_suggested_replies(case=case)] == ["Hallo Jo"]


def test_suggestions_render_in_the_message_sandbox_within_its_bounds():
    """Reply templates are typed into the admin like message templates: the same sandbox (no
    {% debug %} dump of the server's modules) and the same cost bounds (a 400-character template
    cannot build 200 MB on the agent's page); a template that cannot render is left out."""
    a = "x" * 100
    ReplyTemplateFactory(name="bomb", category="billing", intent="refund",
                         body="{% with a='" + a + "' %}{% with b=a|make_list|join:a %}{% with c=b|make_list|join:b %}"
                              "{{ c|length }}{% endwith %}{% endwith %}{% endwith %}")
    ReplyTemplateFactory(name="debug", category="billing", body="{% debug %}")
    ReplyTemplateFactory(name="fine", body="Hi {{ profile.first_name }}{{ profile.nickname }}.")
    case = open_case(customer=CustomerFactory(traits={"first_name": "Ada", "nickname": None}), intent="refund")

    suggestions = case_suggested_replies(case=case)

    assert [(s.name, s.text) for s in suggestions] == [("fine", "Hi Ada.")]
