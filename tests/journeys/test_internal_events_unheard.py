"""Product-made events nothing reacts to (`Message Sent` with no trigger, goal, waiting run or
stage rule) are stored processed, without an engine pass; as soon as something listens, they
go through the engine again: a live trigger, a run waiting for them on a retired version, a
stage rule."""

from __future__ import annotations

import pytest
from django_q.models import Task

from channels_app.services import deliveries_dispatch, message_send
from journeys.engine.compiled import reset_caches
from journeys.models import BusinessUnit, Event, JourneyRun, LifecycleStage
from journeys.engine.listeners import stages_reset
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def mail(db):
    reset_caches()
    stages_reset()
    ChannelFactory(name="mail", kind="email", provider="console")
    TemplateFactory(name="hello", subject="Hello", body="Hi")
    yield
    reset_caches()
    stages_reset()


@pytest.fixture
def unit(db):
    return BusinessUnit.objects.create(name="Sales", slug="sales")


def publish(workflow, definition):
    version = version_build(workflow=workflow, definition=definition)
    version_publish(version=version, reason="test")
    reset_caches()
    return version


def send_one(customer, django_capture_on_commit_callbacks) -> Event:
    """A message to the customer, dispatched (console provider); its `Message Sent` event."""
    from channels_app.models import Channel, MessageTemplate

    with django_capture_on_commit_callbacks(execute=True):
        delivery = message_send(customer=customer, template=MessageTemplate.objects.get(name="hello"),
                                channel=Channel.objects.get(name="mail"), idempotency_key=f"k-{customer.pk}",
                                context={})
    with django_capture_on_commit_callbacks(execute=True):
        deliveries_dispatch(delivery_ids=[delivery.pk])
    return Event.objects.get(name="Message Sent", customer=customer)


def engine_passes() -> int:
    return Task.objects.filter(func="journeys.tasks.events_process").count()


def test_a_message_sent_event_nobody_listens_for_is_stored_processed_without_an_engine_pass(
        mail, django_capture_on_commit_callbacks):
    customer = CustomerFactory(email="ann@example.com")
    before = engine_passes()

    event = send_one(customer, django_capture_on_commit_callbacks)

    assert event.status == "processed" and event.processed_at is not None  # kept for the timeline and reports
    assert engine_passes() == before


def test_a_live_trigger_on_message_sent_gets_the_event_through_the_engine(
        mail, unit, django_capture_on_commit_callbacks):
    follow_up = workflow_create(name="follow up", business_unit=unit)
    publish(follow_up, {"trigger_kind": "event", "trigger_event": "Message Sent",
                        "steps": [{"key": "done", "kind": "goal", "config": {}}]})
    customer = CustomerFactory(email="ann@example.com")

    event = send_one(customer, django_capture_on_commit_callbacks)

    assert event.status == "processed"
    assert JourneyRun.objects.filter(workflow=follow_up, customer=customer, trigger_key=f"event:{event.pk}").exists()


def test_a_run_on_a_retired_version_waiting_for_message_sent_still_hears_it(
        mail, unit, api, django_capture_on_commit_callbacks):
    workflow = workflow_create(name="confirm", business_unit=unit)
    first = publish(workflow, {
        "trigger_kind": "event", "trigger_event": "Signed Up",
        "steps": [{"key": "wait", "kind": "wait_for_event", "config": {"event": "Message Sent", "timeout": "1d"}},
                  {"key": "done", "kind": "goal", "config": {}}],
        "edges": [{"from": "wait", "outcome": "event", "to": "done"}]})
    with django_capture_on_commit_callbacks(execute=True):
        api.post("batch", {"batch": [{"type": "identify", "userId": "ann", "traits": {"email": "ann@example.com"}},
                                     {"type": "track", "userId": "ann", "event": "Signed Up"}]})
    run = JourneyRun.objects.get(workflow=workflow)
    assert (run.status, run.wait_event) == ("waiting", "Message Sent")
    publish(workflow, {"trigger_kind": "event", "trigger_event": "Signed Up",  # v1 retires; the run stays on it
                       "steps": [{"key": "done", "kind": "goal", "config": {}}]})
    first.refresh_from_db()
    assert first.state == "retired"

    send_one(run.customer, django_capture_on_commit_callbacks)

    run.refresh_from_db()
    assert run.status == "completed" and run.version_id == first.pk
    assert run.executions.get(step_key="wait").outcome == "event"


def test_with_a_stage_rule_every_message_sent_event_is_processed_by_the_engine(
        mail, django_capture_on_commit_callbacks):
    LifecycleStage.objects.create(key="mailed", name="Mailed", order=1, rule="events_in_last('Message Sent', days=1) >= 1")
    stages_reset()
    customer = CustomerFactory(email="ann@example.com")
    before = engine_passes()

    send_one(customer, django_capture_on_commit_callbacks)

    assert engine_passes() > before  # the Message Sent pass (and the Stage Entered one it causes)
    customer.refresh_from_db()
    assert customer.stage == "mailed"


@pytest.mark.parametrize("counted, heard", [("Message Sent", True), ("Order Completed", False)])
def test_a_segment_entry_rule_that_counts_an_event_name_makes_only_that_name_heard(
        mail, unit, django_capture_on_commit_callbacks, counted, heard):
    workflow = workflow_create(name="engaged", business_unit=unit)
    publish(workflow, {"trigger_kind": "segment_entry", "reentry_policy": "always",
                       "trigger_config": {"rule": f"events_in_last('{counted}', days=7) >= 3"},
                       "steps": [{"key": "done", "kind": "goal", "config": {}}]})
    customer = CustomerFactory(email="ann@example.com")
    before = engine_passes()

    send_one(customer, django_capture_on_commit_callbacks)

    # the engine marks the customers of counted events for the segment-entry refresh
    assert (engine_passes() > before) is heard
