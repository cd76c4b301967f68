"""A history event (an import that did not opt in, or older than EVENT_TRIGGER_MAX_AGE_S when
accepted) starts no workflow, but still stops or resolves what is under way: a purchase imported
or delivered late converts the run whose goal it is, closes the "not followed by" window it
follows up, and answers a wait that began before it happened."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone as djtz

from journeys.engine.scheduler import runs_wake_due, watches_fire_due
from journeys.models import Customer, Event, JourneyRun, TriggerWatch
from journeys.services.ingest import event_ingest, events_parse
from tests.journeys.test_engine import CART, WAIT, publish, unit  # noqa: F401

pytestmark = pytest.mark.django_db

IMPORTED = "history: imported by job 1 without 'Start workflows for these events'"


def ingest(source, payload: dict, *, history: str = IMPORTED):
    """What an event import does with its rows (the job service calls event_ingest with `history`)."""
    return event_ingest(source=source, events=events_parse(payloads=[payload], received_at=djtz.now()), history=history)


def ago(**delta) -> str:
    return (djtz.now() - timedelta(**delta)).isoformat()


def test_an_imported_purchase_closes_the_cart_window_and_starts_no_window_itself(publish, send, source):  # noqa: F811
    # given a cart reminder ("Checkout Started not followed by Order Completed within 2 days") and an open window
    publish({**CART, "trigger_config": {"followed_by": "Order Completed", "within": "2d"}})
    send(userId="u1", event="Checkout Started", timestamp=ago(hours=2))
    # when yesterday's POS orders are imported without "Start workflows" (u2's checkout is imported too)
    ingest(source, {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "pos-1",
                    "timestamp": ago(hours=1)})
    ingest(source, {"type": "track", "userId": "u2", "event": "Checkout Started", "messageId": "pos-2",
                    "timestamp": ago(hours=1)})
    # then the events are history, u1's window is closed, u2's import opened none, and no reminder starts
    assert set(Event.objects.filter(message_id__startswith="pos-").values_list("status", flat=True)) == {"history"}
    assert TriggerWatch.objects.get().cancelled_at is not None
    watches_fire_due(now=djtz.now() + timedelta(days=3))
    assert JourneyRun.objects.count() == 0


def test_a_purchase_delivered_after_the_max_age_closes_a_long_window(api, publish, send):  # noqa: F811
    # given a 30-day "checkout not followed by a purchase" window opened 9 days ago
    publish({**CART, "trigger_config": {"followed_by": "Order Completed", "within": "30d"}})
    checkout = send(userId="u1", event="Checkout Started")
    Event.objects.filter(pk=checkout.pk).update(timestamp=djtz.now() - timedelta(days=9))
    TriggerWatch.objects.update(due_at=djtz.now() + timedelta(days=21))
    # when the purchase made a day later reaches /v1/batch only now (an offline queue), 8 days old
    response = api.post("batch", {"batch": [{"type": "track", "userId": "u1", "event": "Order Completed",
                                            "messageId": "late-1", "timestamp": ago(days=8)}]})
    assert response.status_code == 200, response.content
    # then it is history (it starts nothing) and it closed the window: no "you did not buy" journey
    assert Event.objects.get(message_id="late-1").status == "history"
    watches_fire_due(now=djtz.now() + timedelta(days=31))
    assert JourneyRun.objects.count() == 0


def test_an_imported_goal_event_converts_the_run(publish, send, source):  # noqa: F811
    publish({**WAIT, "goal_event": "Order Completed"})
    send(userId="u1", event="Signed Up")
    ingest(source, {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "pos-3"})
    run = JourneyRun.objects.get()
    assert run.status == "completed" and run.converted_at is not None


def test_an_imported_goal_event_from_before_the_run_does_not_convert_it(publish, send, source):  # noqa: F811
    publish({**WAIT, "goal_event": "Order Completed"})
    send(userId="u1", event="Signed Up")
    ingest(source, {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "pos-4",
                    "timestamp": ago(days=2)})
    run = JourneyRun.objects.get()
    assert (run.status, run.converted_at) == ("waiting", None)


def test_an_imported_event_answers_a_wait_only_if_it_happened_after_the_wait_began(publish, send, source):  # noqa: F811
    # given customers who signed up two hours ago (delivered late) and wait for "Activated": the
    # wait began, in their own time, when they signed up
    publish(WAIT)
    for user in ("after", "between", "before"):
        send(userId=user, event="Signed Up", timestamp=ago(hours=2))
    # when an import brings an Activated of each: one stamped now, one from an hour ago (after the
    # sign-up, before the worker got to it), one from three hours ago (before the wait began)
    ingest(source, {"type": "track", "userId": "after", "event": "Activated", "messageId": "a-1",
                    "properties": {"ok": True}})
    ingest(source, {"type": "track", "userId": "between", "event": "Activated", "messageId": "a-3",
                    "properties": {"ok": True}, "timestamp": ago(hours=1)})
    ingest(source, {"type": "track", "userId": "before", "event": "Activated", "messageId": "a-2",
                    "properties": {"ok": True}, "timestamp": ago(hours=3)})
    # then the first two took the event branch; the third still waits and times out as before
    for user in ("after", "between"):
        run = JourneyRun.objects.get(customer__external_id=user)
        assert run.status == "completed"
        assert list(run.executions.values_list("step_key", "outcome")) == [("wait", "event"), ("yay", "next")]
    assert JourneyRun.objects.get(customer__external_id="before").status == "waiting"
    runs_wake_due(now=djtz.now() + timedelta(days=1, minutes=1))
    assert Customer.objects.get(external_id="before").traits.get("nudged") is True


def test_a_history_event_starts_no_run_whatever_the_trigger(publish, source):  # noqa: F811
    # given workflows started by an event and by an attribute change
    publish({"trigger_event": "Signed Up", "steps": [{"key": "g", "kind": "goal", "config": {}}], "edges": []})
    publish({"trigger_kind": "attribute_change", "trigger_config": {"attribute": "plan", "to": "pro"},
             "steps": [{"key": "g", "kind": "goal", "config": {}}], "edges": []}, name="pro")
    # when both come in an import
    ingest(source, {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "h-1"})
    ingest(source, {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}, "messageId": "h-2"})
    # then they are stored (the profile has the trait) and nothing started
    assert Customer.objects.get(external_id="u1").traits["plan"] == "pro"
    assert JourneyRun.objects.count() == 0


def test_history_of_more_customers_costs_no_more_statements(source):  # noqa: F811
    """What history settles (goals, windows, waits, segment members, stages) is read set-based:
    an import page of 40 customers takes as many statements as one of 5, not one more each."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def statements(first: int, count: int) -> int:
        payloads = [{"type": "identify", "userId": f"hq-{i}", "traits": {"plan": "pro"}, "messageId": f"hq-{i}"}
                    for i in range(first, first + count)]
        with CaptureQueriesContext(connection) as queries:
            event_ingest(source=source, events=events_parse(payloads=payloads, received_at=djtz.now()),
                         history=IMPORTED)
        return len(queries)

    statements(0, 3)  # caches warm
    assert statements(100, 40) <= statements(200, 5) + 5
