"""send_message and webhook inside real workflows: holdout, signed webhooks, step options, dry run."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from channels_app.models import Delivery
from channels_app.providers.http import webhook_signature_valid
from journeys.models import BusinessUnit, Event
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.channels_app.factories import ChannelFactory, TemplateFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def publish(db):
    unit = BusinessUnit.objects.create(name="Retention", slug="retention")
    names = iter(range(1000))

    def make(definition: dict):
        workflow = workflow_create(name=f"wf-{next(names)}", business_unit=unit)
        return version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")

    return make


def test_holdout_customers_are_suppressed_with_reason_holdout(publish, post):
    ChannelFactory(name="email", kind="email", provider="console")
    TemplateFactory(name="hello")
    publish({"trigger_event": "Signed Up", "steps": [
        {"key": "hold", "kind": "update_profile", "config": {"variables": {"holdout": True}}},
        {"key": "mail", "kind": "send_message", "config": {"channel": "email", "template": "hello"}},
    ], "edges": [{"from": "hold", "outcome": "next", "to": "mail"}]})

    post("identify", userId="h", traits={"email": "h@example.com"})
    post(userId="h", event="Signed Up")

    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.reason) == ("suppressed", "holdout")
    assert delivery.idempotency_key.startswith("run:") and delivery.step_key == "mail"


def test_webhook_step_posts_signed_json_once(publish, post, vendor, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK_SECRET", "hook-secret")
    ChannelFactory(name="crm", kind="webhook", provider="webhook",
                   settings={"url": vendor.url + "/hooks/crm", "secret_env": "JOURNEYS_SECRET_TEST_HOOK_SECRET"})
    publish({"trigger_event": "Order Completed", "steps": [
        {"key": "hook", "kind": "webhook", "config": {"channel": "crm", "payload": {
            "plan": "{{ profile.plan }}", "total": "{{ event.properties.total }}"}}},
    ]})

    post("identify", userId="w", traits={"plan": "pro"})
    post(userId="w", event="Order Completed", properties={"total": 42})
    event = Event.objects.get(name="Order Completed")
    from journeys.engine.processor import events_process

    Event.objects.filter(pk=event.pk).update(status="pending")
    events_process(event_ids=[event.pk])  # a redelivered task

    [request] = vendor.requests
    assert request.path == "/hooks/crm"
    assert webhook_signature_valid(secret="hook-secret", timestamp=request.headers["X-Timestamp"], body=request.body,
                                   header=request.headers["X-Signature"])
    assert not webhook_signature_valid(secret="other", timestamp=request.headers["X-Timestamp"], body=request.body,
                                       header=request.headers["X-Signature"])
    body = json.loads(request.body)
    assert body["payload"] == {"plan": "pro", "total": "42", "event": "Order Completed", "user_id": "w"}
    assert request.headers["Idempotency-Key"] == Delivery.objects.get().idempotency_key


def test_send_message_step_validates_its_options(publish):
    ChannelFactory(name="email", kind="email", provider="console")
    TemplateFactory(name="hello")
    base = {"channel": "email", "template": "hello"}
    with pytest.raises(ValidationError):
        publish({"trigger_event": "X", "steps": [{"key": "m", "kind": "send_message",
                                                   "config": {**base, "min_gap_other_channel": "soon"}}]})
    version = publish({"trigger_event": "X", "steps": [{"key": "m", "kind": "send_message",
                                                         "config": {**base, "min_gap_other_channel": "4h"}}]})
    assert version.steps.get().config["min_gap_other_channel"] == 14400


def test_step_gap_option_reaches_the_delivery(publish, post):
    sms = ChannelFactory(name="sms", kind="sms", provider="console")
    ChannelFactory(name="email", kind="email", provider="console")
    TemplateFactory(name="hello")
    publish({"trigger_event": "Ping", "steps": [
        {"key": "mail", "kind": "send_message", "config": {"channel": "email", "template": "hello"}},
        {"key": "text", "kind": "send_message", "config": {"channel": "sms", "template": "hello",
                                                           "min_gap_other_channel": "2h"}},
    ], "edges": [{"from": "mail", "outcome": "next", "to": "text"}]})
    post("identify", userId="g", traits={"email": "g@example.com", "phone": "+1555"})
    post(userId="g", event="Ping")
    text = Delivery.objects.get(channel=sms)
    assert (text.status, text.reason) == ("deferred", "recent_contact")


def test_template_for_another_channel_kind_is_refused(publish):
    ChannelFactory(name="sms", kind="sms", provider="console")
    TemplateFactory(name="mail-only", channel_kind="email")
    with pytest.raises(ValidationError) as error:
        publish({"trigger_event": "X", "steps": [{"key": "m", "kind": "send_message",
                                                   "config": {"channel": "sms", "template": "mail-only"}}]})
    assert "is for email" in str(error.value)


def test_webhook_payload_respects_personalization_consent(publish, post, vendor, monkeypatch):
    from channels_app.services import consent_set
    from journeys.models import Customer
    from tests.channels_app.factories import topic

    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK_SECRET", "s")
    ChannelFactory(name="crm", kind="webhook", provider="webhook",
                   settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK_SECRET"})
    publish({"trigger_event": "Ping", "steps": [
        {"key": "hook", "kind": "webhook", "config": {"channel": "crm", "payload": {"ltv": "{{ profile.ltv }}"}}}]})
    post("identify", userId="p", traits={"ltv": 999})
    consent_set(customer=Customer.objects.get(external_id="p"), channel_kind="", topic=topic("personalization"),
                status="opted_out", source="t")
    post(userId="p", event="Ping")
    assert vendor.requests[0].json()["payload"]["ltv"] == ""
