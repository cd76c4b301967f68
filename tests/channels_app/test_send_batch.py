"""Messages of one engine batch: recorded together, sent by one dispatch task, and their
`Message Sent` events stored together (not one task per message)."""

from __future__ import annotations

import pytest
from django_q.models import Task

from channels_app.models import Delivery
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


def test_a_step_that_flushes_the_batch_before_each_visit_still_leaves_one_dispatch_task(
    api, django_capture_on_commit_callbacks
):
    """update_profile is not batch-safe: the batch is written before each of its visits. The
    batch's messages still go to one dispatch task (before: one task per customer)."""
    reset_caches()
    ChannelFactory(name="mail", kind="email", provider="console")
    TemplateFactory(name="hello", subject="Hello {{ profile.first_name }}", body="Hi")
    unit = BusinessUnit.objects.create(name="Sales", slug="sales")
    version_publish(version=version_build(workflow=workflow_create(name="tagged", business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": "Signed Up",
        "steps": [{"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "hello"}},
                  {"key": "tag", "kind": "update_profile", "config": {"traits": {"welcomed": True}}}],
        "edges": [{"from": "send", "outcome": "next", "to": "tag"}],
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
    from journeys.models import Customer

    assert all(c.traits.get("welcomed") is True for c in Customer.objects.all())
    reset_caches()


@pytest.mark.parametrize("text", [
    "Hi {{ profile.first_name }}, total {{ event.properties.total }} {{ event.properties.flag }}",
    "{{ profile.missing }}|{{ journey.x.y }}|{{ other.thing }}|{{ event.items.0 }}|{{ event.items.9 }}",
    "<b>{{ profile.name }}</b> {{ event.properties.none }} {{ profile.items }} {{ event.items.count }}",
    "{{ event.keys.1 }} {{ event.price }} {{ profile.first_name|upper }} {% if profile.name %}y{% endif %}",
])
@pytest.mark.parametrize("locale", ["", "de"])
def test_plain_templates_render_as_django_renders_them(text, locale):
    """Given texts a batch renders without Django's Context (plain variables over plain dicts),
    when rendered, then the subject, bodies and missing list equal Django's own rendering."""
    from decimal import Decimal

    from channels_app.services import templates

    template = TemplateFactory(subject=text, body=text, html_body=text)
    context = {"profile": {"first_name": "Ann", "name": "<Ann & Bo>"},
               "event": {"properties": {"total": 120, "flag": True, "none": None}, "items": ["a", 2],
                         "keys": {1: "one"}, "price": Decimal("9.50")},
               "journey": {}}
    fast = templates.template_render(template=template, context=context, locale=locale)
    original = templates._plain_parts
    templates._plain_parts = lambda text: None  # every text through Django
    try:
        slow = templates.template_render(template=template, context=context, locale=locale)
    finally:
        templates._plain_parts = original
    assert (fast.subject, fast.body, fast.html_body, fast.missing) == \
        (slow.subject, slow.body, slow.html_body, slow.missing)
