"""Events act by their own time (their timestamp), not by when a worker gets to them: against an
inactivity window's end, a wait's start and a wait's deadline. Each case runs in the set-based pass
and in the one-event-at-a-time replay (`path`)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone as djtz

from journeys.engine import processor, wakeups
from journeys.engine.scheduler import runs_wake_due, watches_fire_due
from journeys.models import Customer, JourneyRun, TriggerWatch
from journeys.tasks import runs_wake
from tests.journeys.test_engine import CART, edges, publish, steps, unit  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["set_based", "one_by_one"])
def path(request, monkeypatch):
    """one_by_one: the set-based pass breaks, so every batch is replayed one event at a time."""
    if request.param == "one_by_one":
        def broken(**kwargs):
            raise RuntimeError("set-based pass broken for the test")

        monkeypatch.setattr(processor, "_process_set", broken)
    return request.param


@pytest.fixture
def clock(monkeypatch):
    """Set Django's clock back (`clock(hours=2)`: two hours ago) until `clock()` puts it right again."""
    real = djtz.now

    def set_back(**delta):
        monkeypatch.setattr(djtz, "now", (lambda: real() - timedelta(**delta)) if delta else real)

    return set_back


def at(moment) -> str:
    return moment.isoformat()


def traits(user: str) -> dict:
    return Customer.objects.get(external_id=user).traits


def outcomes(user: str) -> list[tuple[str, str]]:
    return list(JourneyRun.objects.get(customer__external_id=user).executions.values_list("step_key", "outcome"))


# "Did they order the cart within 4 hours?" (the QA "cart" journey)
CART_WAIT = {
    "trigger_event": "Cart Updated",
    "reentry_policy": "always",
    "steps": steps(
        ("note", "update_profile", {"variables": {"cart_id": {"rule": "event.properties.cart_id"}}}),
        ("wait", "wait_for_event", {"event": "Order Completed", "timeout": "4h",
                                    "filter": "event.properties.cart_id == journey.cart_id"}),
        ("thanks", "update_profile", {"traits": {"thanked": {"rule": "event.properties.cart_id"}}}),
        ("remind", "update_profile", {"traits": {"reminded": True}}),
    ),
    "edges": edges(("note", "next", "wait"), ("wait", "event", "thanks"), ("wait", "timeout", "remind")),
}


def test_a_follow_up_after_the_window_ended_leaves_it_to_fire(publish, send, path):  # noqa: F811
    # given checkouts two hours ago (1 h windows, not fired yet: the tick is late)
    publish(CART)
    two_hours_ago = djtz.now() - timedelta(hours=2)
    for user in ("late", "inside"):
        send(userId=user, event="Checkout Started", timestamp=at(two_hours_ago))
    # when "late" orders 90 minutes after the checkout (after the window), "inside" 30 minutes after
    send(userId="late", event="Order Completed", timestamp=at(two_hours_ago + timedelta(minutes=90)))
    send(userId="inside", event="Order Completed", timestamp=at(two_hours_ago + timedelta(minutes=30)))
    # then the tick enrols "late" (not followed within the hour) and not "inside"
    watches_fire_due()
    assert list(JourneyRun.objects.values_list("customer__external_id", flat=True)) == ["late"]
    assert traits("late")["reminded"] is True
    assert TriggerWatch.objects.get(customer__external_id="inside").cancelled_at is not None


def test_a_wait_is_answered_by_an_order_that_reached_the_api_before_the_cart(publish, send, path):  # noqa: F811
    # given the cart journey
    publish(CART_WAIT)
    t = djtz.now() - timedelta(seconds=30)
    # when each customer's Order Completed reaches the API one request before the Cart Updated
    # stamped a second before it (two devices): same cart; another cart; stamped before the cart
    for user, cart, offset in (("same", "c1", 1), ("other", "c9", 1), ("earlier", "c1", -1)):
        send(userId=user, event="Order Completed", properties={"cart_id": cart}, timestamp=at(t + timedelta(seconds=offset)))
        send(userId=user, event="Cart Updated", properties={"cart_id": "c1"}, timestamp=at(t))
    # then "same" ordered after updating the cart: the run took the event branch at once and read the order
    assert outcomes("same") == [("note", "next"), ("wait", "event"), ("thanks", "next")]
    assert traits("same")["thanked"] == "c1"
    # the others wait: another cart's order does not answer, nor one from before the cart
    assert set(JourneyRun.objects.exclude(customer__external_id="same").values_list("status", flat=True)) == {"waiting"}
    runs_wake_due(now=djtz.now() + timedelta(hours=5))
    assert [traits(u).get("reminded") for u in ("same", "other", "earlier")] == [None, True, True]


def test_an_order_that_answered_one_wait_does_not_answer_the_next(publish, send, path):  # noqa: F811
    # given "ordered after the cart? then ordered again within a week?"
    publish({
        "trigger_event": "Cart Updated",
        "steps": steps(
            ("first", "wait_for_event", {"event": "Order Completed", "timeout": "4h"}),
            ("again", "wait_for_event", {"event": "Order Completed", "timeout": "7d"}),
            ("repeat", "update_profile", {"traits": {"repeat": {"rule": "event.properties.n"}}}),
        ),
        "edges": edges(("first", "event", "again"), ("again", "event", "repeat")),
    })
    t = djtz.now() - timedelta(minutes=1)
    # when both of "twice"'s orders, and "once"'s only order, reach the API before the cart
    for n in (1, 2):
        send(userId="twice", event="Order Completed", properties={"n": n}, timestamp=at(t + timedelta(seconds=n)))
    send(userId="once", event="Order Completed", properties={"n": 1}, timestamp=at(t + timedelta(seconds=1)))
    for user in ("twice", "once"):
        send(userId=user, event="Cart Updated", timestamp=at(t))
    # then each order answers one wait: "twice" is through both, "once" waits for a second order
    assert outcomes("twice") == [("first", "event"), ("again", "event"), ("repeat", "next")]
    assert traits("twice")["repeat"] == 2
    assert outcomes("once") == [("first", "event"), ("again", "")]
    send(userId="once", event="Order Completed", properties={"n": 3})
    assert traits("once")["repeat"] == 3


def test_an_order_after_the_deadline_takes_the_timeout_path_when_the_tick_is_late(publish, send, clock, path):  # noqa: F811
    # given customers who updated their cart five hours ago (their 4 h waits ended an hour ago)
    publish(CART_WAIT)
    clock(hours=5)
    for user in ("late", "in_time"):
        send(userId=user, event="Cart Updated", properties={"cart_id": "c1"})
    clock()
    # when, before the (late) tick, "late" orders now and "in_time" an order stamped 3 hours ago arrives
    send(userId="late", event="Order Completed", properties={"cart_id": "c1"})
    send(userId="in_time", event="Order Completed", properties={"cart_id": "c1"},
         timestamp=at(djtz.now() - timedelta(hours=3)))
    # then "late" is left to the tick, which times it out; "in_time" took the event branch
    assert JourneyRun.objects.get(customer__external_id="late").status == "waiting"
    assert outcomes("in_time") == [("note", "next"), ("wait", "event"), ("thanks", "next")]
    runs_wake_due()
    assert outcomes("late") == [("note", "next"), ("wait", "timeout"), ("remind", "next")]
    assert traits("late")["reminded"] is True and "thanked" not in traits("late")


def test_an_order_after_the_deadline_leaves_a_run_the_tick_claimed_to_its_timeout(publish, send, clock, path, monkeypatch):  # noqa: F811
    # given a customer whose 4 h wait ended an hour ago, claimed by a tick whose wake-up task has not run yet
    publish(CART_WAIT)
    clock(hours=5)
    send(userId="u1", event="Cart Updated", properties={"cart_id": "c1"})
    clock()
    pages = []
    monkeypatch.setattr(wakeups, "wake_enqueue", lambda **page: pages.append(page))
    assert runs_wake_due() == 1
    # when the order, placed now, is processed before that task
    send(userId="u1", event="Order Completed", properties={"cart_id": "c1"})
    # then the run is left to the task, which times it out
    [page] = pages
    assert runs_wake(page["run_ids"], page["lease"], page["now"]) == 1
    assert outcomes("u1") == [("note", "next"), ("wait", "timeout"), ("remind", "next")]


def queued(api, **body):
    """An event stored by the API that no worker has processed yet (its task still in the queue)."""
    from journeys.models import Event

    response = api.post("track", body)
    assert response.status_code == 200, response.content
    event = Event.objects.order_by("-id").first()
    assert event.status == "pending"
    return event


def test_an_order_still_queued_when_the_tick_comes_holds_the_timeout_until_a_worker_takes_it(api, publish, send, clock):  # noqa: F811
    # given a customer whose 4 h wait ended an hour ago, and their order placed 3 hours ago that
    # reached the API but waits in a backlog (no worker has processed it yet)
    publish(CART_WAIT)
    clock(hours=5)
    send(userId="u1", event="Cart Updated", properties={"cart_id": "c1"})
    clock()
    order = queued(api, userId="u1", event="Order Completed", properties={"cart_id": "c1"},
                   timestamp=at(djtz.now() - timedelta(hours=3)))
    # when the tick comes first
    runs_wake_due()
    # then the run is not timed out: no reminder for a customer who ordered
    run = JourneyRun.objects.get(customer__external_id="u1")
    assert run.status == "waiting" and "reminded" not in traits("u1")
    assert run.next_wake_at > djtz.now()
    # and the order, once processed, answers the wait
    processor.events_process(event_ids=[order.pk])
    assert outcomes("u1") == [("note", "next"), ("wait", "event"), ("thanks", "next")]
    assert traits("u1")["thanked"] == "c1" and "reminded" not in traits("u1")


def test_a_queued_event_that_cannot_answer_the_wait_does_not_hold_its_timeout_for_long(api, publish, send, clock):  # noqa: F811
    # given customers whose 4 h waits ended an hour ago, with queued events that do not answer them:
    # an order placed after the deadline, and an order of another cart (the wait's filter)
    publish(CART_WAIT)
    clock(hours=5)
    for user in ("after", "other"):
        send(userId=user, event="Cart Updated", properties={"cart_id": "c1"})
    clock()
    queued(api, userId="after", event="Order Completed", properties={"cart_id": "c1"})
    other = queued(api, userId="other", event="Order Completed", properties={"cart_id": "c2"},
                   timestamp=at(djtz.now() - timedelta(hours=3)))
    # when the tick comes: the order after the deadline holds nothing
    runs_wake_due()
    assert outcomes("after") == [("note", "next"), ("wait", "timeout"), ("remind", "next")]
    assert JourneyRun.objects.get(customer__external_id="other").status == "waiting"
    # and once the other cart's order is processed (it does not pass the filter), the next tick times it out
    processor.events_process(event_ids=[other.pk])
    assert JourneyRun.objects.get(customer__external_id="other").status == "waiting"
    runs_wake_due(now=djtz.now() + timedelta(minutes=1))
    assert outcomes("other") == [("note", "next"), ("wait", "timeout"), ("remind", "next")]


def test_an_event_queued_past_the_grace_no_longer_holds_the_timeout(api, publish, send, clock):  # noqa: F811
    # given a wait whose deadline passed long ago and an answer that has sat in the queue since
    publish(CART_WAIT)
    clock(hours=5)
    send(userId="u1", event="Cart Updated", properties={"cart_id": "c1"})
    clock()
    queued(api, userId="u1", event="Order Completed", properties={"cart_id": "c1"},
           timestamp=at(djtz.now() - timedelta(hours=3)))
    runs_wake_due()
    assert JourneyRun.objects.get(customer__external_id="u1").status == "waiting"
    # when no worker took it for longer than the grace (the workers are down), the tick times it out
    runs_wake_due(now=djtz.now() + wakeups.ANSWER_GRACE)
    assert outcomes("u1") == [("note", "next"), ("wait", "timeout"), ("remind", "next")]


# Review 2: an event answers one wait of a run only, whichever path (live, stored lookup) meets it.
THREE_ORDERS = {
    "trigger_event": "Cart Updated",
    "steps": steps(
        ("first", "wait_for_event", {"event": "Order Completed", "timeout": "30d"}),
        ("second", "wait_for_event", {"event": "Order Completed", "timeout": "30d"}),
        ("third", "wait_for_event", {"event": "Order Completed", "timeout": "30d"}),
        ("vip", "update_profile", {"traits": {"vip": True}}),
    ),
    "edges": edges(("first", "event", "second"), ("second", "event", "third"), ("third", "event", "vip")),
}


def test_two_imported_orders_answer_two_waits_not_three(api, publish, clock, path):  # noqa: F811
    from journeys.models import Event

    # given a run that began waiting 10 days ago for three successive orders
    publish(THREE_ORDERS)
    clock(days=10)
    api.post("track", {"userId": "u1", "event": "Cart Updated"})
    processor.events_process(event_ids=list(Event.objects.values_list("pk", flat=True)))
    clock()
    assert JourneyRun.objects.get().status == "waiting"
    # when two orders from 9 days ago reach /v1/batch together (older than EVENT_TRIGGER_MAX_AGE_S: history)
    nine = djtz.now() - timedelta(days=9)
    response = api.post("batch", {"batch": [
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": f"o{n}",
         "timestamp": at(nine + timedelta(seconds=n))} for n in (1, 2)]})
    assert response.status_code == 200, response.content
    assert set(Event.objects.filter(message_id__in=["o1", "o2"]).values_list("status", flat=True)) == {"history"}
    # then two orders answer two waits: the run waits at "third" and is no VIP
    assert outcomes("u1") == [("first", "event"), ("second", "event"), ("third", "")]
    assert "vip" not in traits("u1")


def test_an_order_stamped_minutes_ahead_answers_one_wait_only(send, publish):  # noqa: F811
    """Ingestion keeps a client timestamp up to 5 minutes in the future (no sentAt to correct it)."""
    # given "ordered? wait a minute, then: ordered again within 4h?"
    publish({
        "trigger_event": "Cart Updated",
        "steps": steps(
            ("first", "wait_for_event", {"event": "Order Completed", "timeout": "4h"}),
            ("pause", "delay", {"duration": "1m"}),
            ("again", "wait_for_event", {"event": "Order Completed", "timeout": "4h"}),
            ("vip", "update_profile", {"traits": {"vip": True}}),
        ),
        "edges": edges(("first", "event", "pause"), ("pause", "next", "again"), ("again", "event", "vip")),
    })
    send(userId="u1", event="Cart Updated")
    # when one order arrives from a device whose clock is 4 minutes fast
    send(userId="u1", event="Order Completed", timestamp=at(djtz.now() + timedelta(minutes=4)))
    assert JourneyRun.objects.get().current_step == "pause"
    runs_wake_due(now=djtz.now() + timedelta(minutes=2))  # the delay ends
    # then that one order answered the first wait only
    assert outcomes("u1")[-1] == ("again", "")
    assert "vip" not in traits("u1")


DELAY_THEN_WAIT = {
    "trigger_event": "Cart Updated",
    "steps": steps(
        ("pause", "delay", {"duration": "1h"}),
        ("wait", "wait_for_event", {"event": "Order Completed", "timeout": "4h"}),
        ("thanks", "update_profile", {"traits": {"thanked": True}}),
        ("remind", "update_profile", {"traits": {"reminded": True}}),
    ),
    "edges": edges(("pause", "next", "wait"), ("wait", "event", "thanks"), ("wait", "timeout", "remind")),
}


def test_an_order_after_the_delay_ended_but_before_the_late_tick_answers_the_wait(send, publish, clock, monkeypatch):  # noqa: F811
    # given a 1 h delay before a 4 h wait, entered 61 minutes ago (the delay ended a minute ago)
    publish(DELAY_THEN_WAIT)
    clock(minutes=61)
    send(userId="u1", event="Cart Updated")
    clock()
    delay_end = JourneyRun.objects.get().next_wake_at
    assert delay_end < djtz.now()
    # when the tick claims it only now (a minute late), and the order the customer placed 30 s
    # after the delay ended is processed after the wake-up
    pages = []
    monkeypatch.setattr(wakeups, "wake_enqueue", lambda **page: pages.append(page))
    assert runs_wake_due() == 1
    [page] = pages
    runs_wake(*page.values())  # the task as wake_enqueue queued it: run_ids, lease, now, due
    assert JourneyRun.objects.get().current_step == "wait"
    send(userId="u1", event="Order Completed", timestamp=at(delay_end + timedelta(seconds=30)))
    # then the order happened within the wait (after the delay ended): the event branch, as if the tick had been on time
    assert outcomes("u1")[-2:] == [("wait", "event"), ("thanks", "next")]


def test_set_based_and_one_by_one_read_the_same_stored_candidates(api, send, publish, path):  # noqa: F811
    """Each wait reads the earliest 100 stored events of its name in its own span, alone and in a
    batch alike (review 2 F6/F7): a batch no longer reads every event of the batch's widest span."""
    from journeys.engine.waits import STORED_ANSWERS
    from journeys.models import Event

    # given "did they view the checkout page within 4h of the cart?"
    publish({
        "trigger_event": "Cart Updated",
        "steps": steps(
            ("wait", "wait_for_event", {"event": "Page Viewed", "timeout": "4h",
                                        "filter": "event.properties.path == '/checkout'"}),
            ("thanks", "update_profile", {"traits": {"thanked": True}}),
        ),
        "edges": edges(("wait", "event", "thanks")),
    })
    t = djtz.now() - timedelta(minutes=10)
    # when 100 other page views and then the checkout view (stamped after the cart) reach the API first
    views = [{"type": "track", "userId": "u1", "event": "Page Viewed", "messageId": f"v{n}",
              "properties": {"path": "/checkout" if n > STORED_ANSWERS else f"/p{n}"},
              "timestamp": at(t + timedelta(seconds=n))} for n in range(1, STORED_ANSWERS + 2)]
    assert api.post("batch", {"batch": views}).status_code == 200
    processor.events_process(event_ids=list(Event.objects.filter(status="pending").values_list("pk", flat=True)))
    send(userId="u1", event="Cart Updated", timestamp=at(t))
    # then both paths look at the same 100 earliest: the checkout view, the 101st, is not among them
    assert JourneyRun.objects.get().status == "waiting"
    assert "thanked" not in traits("u1")
