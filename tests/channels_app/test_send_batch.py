"""Messages of one engine batch: recorded together, sent by one dispatch task, and their
`Message Sent` events stored together (not one task per message)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Task

from channels_app.models import Channel, Delivery
from journeys.engine.compiled import reset_caches
from journeys.models import BusinessUnit, Event
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.channels_app.factories import ChannelFactory, TemplateFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def journey(db):
    reset_caches()
    ChannelFactory(name="mail", kind="email", provider="console")
    TemplateFactory(name="hello", subject="Hello {{ profile.first_name }}", body="Hi")
    unit = BusinessUnit.objects.create(name="Sales", slug="sales")
    workflow = workflow_create(name="welcome", business_unit=unit)
    version_publish(version=version_build(workflow=workflow, definition={
        "trigger_kind": "event", "trigger_event": "Signed Up",
        "steps": [{"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "hello"}}],
    }), reason="test")
    yield
    reset_caches()


def tasks(func: str) -> int:
    return Task.objects.filter(func=func).count()


def test_a_batch_of_messages_is_sent_by_one_task_and_its_events_processed_by_one(
    journey, api, django_capture_on_commit_callbacks
):
    people = [f"p{i}" for i in range(5)]
    with django_capture_on_commit_callbacks(execute=True):
        api.post("batch", {"batch": [{"type": "identify", "userId": u, "traits": {"email": f"{u}@example.com",
                                                                                  "first_name": u.upper()}}
                                     for u in people]})
    engine_tasks = tasks("journeys.tasks.events_process")

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("batch", {"batch": [{"type": "track", "userId": u, "event": "Signed Up"} for u in people]})
    assert response.status_code == 200

    assert sorted(Delivery.objects.values_list("to", "status")) == [(f"{u}@example.com", "sent") for u in people]
    assert tasks("channels_app.tasks.deliveries_send") == 1
    sent = Event.objects.filter(name="Message Sent")
    assert sent.count() == 5 and set(sent.values_list("status", flat=True)) == {"processed"}
    # the Signed Up batch; nothing listens for Message Sent, so those are stored processed
    # (tests/journeys/test_internal_events_unheard.py: with a listener, one more pass for the five)
    assert tasks("journeys.tasks.events_process") - engine_tasks == 1


def test_customers_moved_to_another_workflow_after_their_message_leave_one_dispatch_task(
    api, django_capture_on_commit_callbacks
):
    """start_workflow after the send (batch-safe since journeys.engine.moves; before, the batch was
    written before each of its visits): the batch's messages go to one dispatch task and every
    customer's new run is started and done."""
    reset_caches()
    ChannelFactory(name="mail", kind="email", provider="console")
    TemplateFactory(name="hello", subject="Hello {{ profile.first_name }}", body="Hi")
    unit = BusinessUnit.objects.create(name="Sales", slug="sales")
    version_publish(version=version_build(workflow=workflow_create(name="after", business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": "Never Sent",
        "steps": [{"key": "done", "kind": "goal", "config": {}}]}), reason="test")
    version_publish(version=version_build(workflow=workflow_create(name="tagged", business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": "Signed Up",
        "steps": [{"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "hello"}},
                  {"key": "next", "kind": "start_workflow", "config": {"workflow": "after"}}],
        "edges": [{"from": "send", "outcome": "next", "to": "next"}],
    }), reason="test")
    people = [f"q{i}" for i in range(6)]
    with django_capture_on_commit_callbacks(execute=True):
        api.post("batch", {"batch": [{"type": "identify", "userId": u, "traits": {"email": f"{u}@example.com"}}
                                     for u in people]})
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("batch", {"batch": [{"type": "track", "userId": u, "event": "Signed Up"}
                                            for u in people]}).status_code == 200

    assert sorted(Delivery.objects.values_list("to", "status")) == [(f"{u}@example.com", "sent") for u in people]
    assert tasks("channels_app.tasks.deliveries_send") == 1
    from journeys.models import JourneyRun

    assert JourneyRun.objects.filter(workflow__name="after", status="completed").count() == 6
    reset_caches()


@pytest.fixture
def hooked(db, vendor, monkeypatch):
    """A webhook step (one plain variable, one with a filter) in front of an email."""
    reset_caches()
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK_SECRET", "s")
    ChannelFactory(name="crm", kind="webhook", provider="webhook",
                   settings={"url": vendor.url + "/hooks", "secret_env": "JOURNEYS_SECRET_TEST_HOOK_SECRET"})
    ChannelFactory(name="mail", kind="email", provider="console")
    TemplateFactory(name="hello", subject="Hello", body="Hi")
    unit = BusinessUnit.objects.create(name="Ops", slug="ops")
    version_publish(version=version_build(workflow=workflow_create(name="hooked", business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": "Signed Up", "reentry_policy": "always",
        "steps": [{"key": "hook", "kind": "webhook", "config": {"channel": "crm", "payload": {
                      "plan": "{{ profile.plan }}", "shout": "{{ profile.first_name|upper }}", "n": 3}}},
                  {"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "hello"}}],
        "edges": [{"from": "hook", "outcome": "next", "to": "send"}],
    }), reason="test")
    yield vendor
    reset_caches()


def _customers(n: int, prefix: str) -> list:
    from tests.factories import CustomerFactory

    return [CustomerFactory(external_id=f"{prefix}{i}", email=f"{prefix}{i}@example.com",
                            traits={"plan": "pro", "first_name": f"{prefix}{i}", "email": f"{prefix}{i}@example.com"})
            for i in range(n)]


def test_webhook_calls_of_a_batch_are_recorded_with_statements_that_do_not_grow_with_it(hooked):
    """The webhook step is batch-safe: its deliveries join the batch's one INSERT (before: a flush
    of the batch, a savepoint and a dispatch task per visit)."""
    from tests.factories import events_process_counted, pending_events

    small, large = _customers(4, "s"), _customers(40, "l")
    statements_small = events_process_counted(pending_events(small, source="s"))
    statements_large = events_process_counted(pending_events(large, source="l"))

    assert statements_large - statements_small <= 6, (statements_small, statements_large)
    hooks = Delivery.objects.filter(channel__name="crm").order_by("id")
    assert hooks.count() == 44 and set(hooks.values_list("status", flat=True)) == {"queued"}
    assert Delivery.objects.filter(channel__name="mail").count() == 44
    first = hooks.get(customer=small[0])
    assert first.to == hooked.url + "/hooks" and first.step_key == "hook" and first.transactional
    assert first.body == '{"event": "Signed Up", "n": 3, "plan": "pro", "shout": "S0", "user_id": "s0"}'
    assert first.idempotency_key.startswith("run:")


def test_a_holdout_customers_webhook_call_in_a_batch_is_suppressed_as_one_at_a_time(db, vendor, monkeypatch):
    from tests.factories import events_process_counted, pending_events

    reset_caches()
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK_SECRET", "s")
    ChannelFactory(name="crm", kind="webhook", provider="webhook",
                   settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK_SECRET"})
    unit = BusinessUnit.objects.create(name="Ops", slug="ops")
    version_publish(version=version_build(workflow=workflow_create(name="held", business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": "Signed Up",
        "steps": [{"key": "hold", "kind": "update_profile", "config": {"variables": {"holdout": True}}},
                  {"key": "hook", "kind": "webhook", "config": {"channel": "crm", "payload": {"a": 1}}}],
        "edges": [{"from": "hold", "outcome": "next", "to": "hook"}],
    }), reason="test")

    events_process_counted(pending_events(_customers(3, "h")))

    rows = sorted(Delivery.objects.values_list("status", "reason", "step_key"))
    assert rows == [("suppressed", "holdout", "hook")] * 3
    reset_caches()


def test_a_batch_of_webhook_calls_reaches_the_endpoint_once_each_through_one_dispatch_task(
    hooked, api, django_capture_on_commit_callbacks
):
    """Through the API: each customer's call is posted once, with what the customer allowed (one
    opted out of personalization: a name, not the plan), and the batch's calls and emails go to one dispatch task."""
    from channels_app.services import consent_set
    from journeys.models import Customer
    from tests.channels_app.factories import topic

    people = [f"w{i}" for i in range(5)]
    with django_capture_on_commit_callbacks(execute=True):
        api.post("batch", {"batch": [{"type": "identify", "userId": u, "traits": {
            "email": f"{u}@example.com", "plan": "pro", "first_name": u}} for u in people]})
    consent_set(customer=Customer.objects.get(external_id="w1"), channel_kind="", topic=topic("personalization"),
                status="opted_out", source="t")
    dispatch_tasks = tasks("channels_app.tasks.deliveries_send")

    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("batch", {"batch": [{"type": "track", "userId": u, "event": "Signed Up"}
                                            for u in people]}).status_code == 200

    assert tasks("channels_app.tasks.deliveries_send") - dispatch_tasks == 1
    assert tasks("channels_app.tasks.delivery_send") == 0  # before: one task per webhook call
    payloads = sorted((r.json()["payload"] for r in hooked.requests), key=lambda p: p["user_id"])
    assert [(p["user_id"], p["plan"], p["shout"]) for p in payloads] == [
        ("w0", "pro", "W0"), ("w1", "", "W1"), ("w2", "pro", "W2"), ("w3", "pro", "W3"), ("w4", "pro", "W4")]
    assert len({r.headers["Idempotency-Key"] for r in hooked.requests}) == 5
    assert set(Delivery.objects.values_list("status", flat=True)) == {"sent"}


@pytest.mark.parametrize("text", [
    "Hi {{ profile.first_name }}, total {{ event.properties.total }} {{ event.properties.flag }}",
    "{{ profile.missing }}|{{ journey.x.y }}|{{ other.thing }}|{{ event.items.0 }}|{{ event.items.9 }}",
    "<b>{{ profile.name }}</b> {{ event.properties.none }} {{ profile.items }} {{ event.items.count }}",
    "{{ event.keys.1 }} {{ event.price }} {{ profile.first_name|upper }} {% if profile.name %}y{% endif %}",
])
@pytest.mark.parametrize("locale", ["", "de"])
def test_plain_templates_render_as_django_renders_them(text, locale):
    """Given texts a batch renders without Django's Context (plain variables over plain dicts),
    when rendered, then the subject, bodies and missing list (and a webhook payload value,
    not escaped) equal Django's own rendering."""
    from decimal import Decimal

    from channels_app.services import templates

    template = TemplateFactory(subject=text, body=text, html_body=text)
    context = {"profile": {"first_name": "Ann", "name": "<Ann & Bo>"},
               "event": {"properties": {"total": 120, "flag": True, "none": None}, "items": ["a", 2],
                         "keys": {1: "one"}, "price": Decimal("9.50")},
               "journey": {}}
    fast = templates.template_render(template=template, context=context, locale=locale)
    fast_text = templates.text_render(text=text, data=context)  # a webhook payload value
    original = templates._plain_parts
    templates._plain_parts = lambda text: None  # every text through Django
    try:
        slow = templates.template_render(template=template, context=context, locale=locale)
        slow_text = templates.text_render(text=text, data=context)
    finally:
        templates._plain_parts = original
    assert (fast.subject, fast.body, fast.html_body, fast.missing) == \
        (slow.subject, slow.body, slow.html_body, slow.missing)
    assert fast_text == slow_text



@pytest.fixture
def best(db):
    """send_message (email), then send_best_channel over email and sms."""
    reset_caches()
    ChannelFactory(name="email", kind="email", provider="console")
    ChannelFactory(name="sms", kind="sms", provider="console")
    TemplateFactory(name="hello", subject="Hello", body="Hi")
    unit = BusinessUnit.objects.create(name="Ops", slug="ops")
    version_publish(version=version_build(workflow=workflow_create(name="twice", business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": "Signed Up", "reentry_policy": "always",
        "steps": [{"key": "mail", "kind": "send_message", "config": {"channel": "email", "template": "hello"}},
                  {"key": "best", "kind": "send_best_channel",
                   "config": {"template": "hello", "channels": ["email", "sms"], "send_time": "now"}}],
        "edges": [{"from": "mail", "outcome": "next", "to": "best"}],
    }), reason="test")
    yield
    reset_caches()


def _reachable(n: int, prefix: str) -> list:
    from tests.factories import CustomerFactory

    return [CustomerFactory(external_id=f"{prefix}{i}", phone=f"+1555{i:04d}", traits={"preferred_channel": "sms"})
            for i in range(n)]


def test_best_channel_in_a_batch_records_with_the_batchs_insert_and_dispatch_task(best):
    """send_best_channel is batch-safe: its message joins the batch's INSERT and dispatch task
    (before: a flush, a savepoint, ~24 statements and a dispatch task per visit; the history for
    the choices of the whole batch is read at once); the choice is
    the one made one at a time (tests/channels_app/test_best_channel.py runs every case both
    ways): the stated preference, SMS."""
    from channels_app.models import FrequencyCap
    from tests.factories import events_process_counted, pending_events

    FrequencyCap.objects.create(name="sms a day", channel=Channel.objects.get(name="sms"), limit=1, window_s=86400)
    small, large = _reachable(4, "s"), _reachable(24, "l")
    capped = large[0]  # an SMS sent to them an hour ago: the cap holds SMS, the choice falls back to email
    Delivery.objects.create(idempotency_key="earlier-sms", customer=capped, channel=Channel.objects.get(name="sms"),
                            to=capped.phone, status="sent", sent_at=timezone.now() - timedelta(hours=1))
    statements_small = events_process_counted(pending_events(small, source="s"))
    statements_large = events_process_counted(pending_events(large, source="l"))

    best_rows = Delivery.objects.filter(step_key="best")
    assert best_rows.count() == 28
    assert set(best_rows.exclude(customer=capped).values_list("channel__name", "status")) == {("sms", "queued")}
    held = best_rows.get(customer=capped)
    assert held.channel.name == "email" and "sms skipped (frequency_cap: cap sms a day: 1/1 in 86400s)" in \
        held.choice_reason, held.choice_reason
    first = best_rows.get(customer=small[0])
    assert first.notes["channel_choice"]["chosen_by"] == "preference" and first.to == "+15550000"
    assert first.choice_reason.startswith("sms: stated preference (preferred_channel=sms)")
    assert set(Delivery.objects.filter(step_key="mail").values_list("status", flat=True)) == {"queued"}
    assert tasks("channels_app.tasks.delivery_send") == 0  # one deliveries_send per batch instead
    # history, caps and recent contacts read once a batch (before: the caps and contacts per choice)
    assert statements_large - statements_small <= 6, (statements_small, statements_large)
