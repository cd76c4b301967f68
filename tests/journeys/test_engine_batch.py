"""Set-based processing of a batch of events: events_process on many events at once,
fed through the batch API, with the guarantees of processing them one by one."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import resolve

from channels_app.choices import ConsentStatus
from channels_app.models import Delivery
from channels_app.services import consent_set
from channels_app.services.links import link_load
from journeys.engine.compiled import reset_caches
from journeys.engine.processor import events_process
from journeys.models import BusinessUnit, Customer, Event, JourneyRun, StepExecution, WorkflowVersion
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.channels_app.factories import ChannelFactory, TemplateFactory, topic

pytestmark = pytest.mark.django_db


@pytest.fixture
def mail(db):
    ChannelFactory(name="mail", kind="email", provider="console")
    TemplateFactory(name="cart", subject="Cart of {{ profile.first_name|default:'you' }}",
                    body="Plan {{ profile.plan|default:'-' }}, total {{ event.properties.total }}. "
                         "Unsubscribe: {{ links.unsubscribe_url }}")


@pytest.fixture
def publish(db):
    unit = BusinessUnit.objects.create(name="Growth", slug="growth")
    counter = {"n": 0}

    def make(definition: dict):
        counter["n"] += 1
        workflow = workflow_create(name=f"batch-wf-{counter['n']}", business_unit=unit)
        return version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")

    return make


def checkout_then_send(rule: str = "event.properties.total >= 50", **extra) -> dict:
    return {
        "trigger_kind": "event", "trigger_event": "Checkout Started", "reentry_policy": "always",
        "allow_concurrent_runs": True, **extra,
        "steps": [{"key": "check", "kind": "condition", "config": {"rule": rule}},
                  {"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "cart"}}],
        "edges": [{"from": "check", "outcome": "yes", "to": "send"}],
    }


def identify(api, capture, users, **traits):
    batch = [{"type": "identify", "messageId": f"id-{u}", "userId": u,
              "traits": {"email": f"{u}@example.com", "first_name": u.title(), "plan": "pro", **traits}} for u in users]
    with capture(execute=True):
        assert api.post("batch", {"batch": batch}).status_code == 200


def store(api, capture, events: list[dict], *, process: bool = False) -> list[int]:
    """POST one /v1/batch; with process=False the worker does not run (the test calls it)."""
    with capture(execute=process):
        response = api.post("batch", {"batch": [{"type": "track", **e} for e in events]})
    assert response.status_code == 200, response.content
    return list(Event.objects.filter(message_id__in=[e["messageId"] for e in events]).order_by("id")
                .values_list("id", flat=True))


def checkouts(users, tag="c", total=120):
    return [{"messageId": f"{tag}-{u}", "userId": u, "event": "Checkout Started", "properties": {"total": total}}
            for u in users]


def test_a_batch_enrols_every_customer_and_records_one_delivery_each(api, mail, publish, django_capture_on_commit_callbacks):
    acts = publish(checkout_then_send())
    quiet = publish(checkout_then_send(rule="event.properties.total >= 100000"))
    users = [f"u{i}" for i in range(12)]
    identify(api, django_capture_on_commit_callbacks, users)

    store(api, django_capture_on_commit_callbacks, checkouts(users), process=True)

    assert JourneyRun.objects.filter(version=acts, status="completed").count() == 12
    assert JourneyRun.objects.filter(version=quiet, status="completed").count() == 12
    assert StepExecution.objects.count() == 12 * 2 + 12
    deliveries = Delivery.objects.order_by("to")
    assert sorted(d.to for d in deliveries) == sorted(f"{u}@example.com" for u in users)
    assert {d.status for d in deliveries} == {"sent"}  # one dispatch task for the batch sent them all
    first = deliveries.filter(to="u3@example.com").get()
    assert first.subject == "Cart of U3" and "Plan pro, total 120." in first.body
    assert Event.objects.filter(status="processed", name="Checkout Started").count() == 12


def test_links_in_a_batched_message_carry_its_own_delivery_id(api, mail, publish, django_capture_on_commit_callbacks):
    publish(checkout_then_send())
    identify(api, django_capture_on_commit_callbacks, ["a", "b", "c"])
    store(api, django_capture_on_commit_callbacks, checkouts(["a", "b", "c"]), process=True)

    for delivery in Delivery.objects.all():
        url = delivery.body.split("Unsubscribe: ")[1].strip()
        token = resolve(urlparse(url).path).kwargs["token"]
        assert link_load(purpose="unsubscribe", token=token)["d"] == delivery.pk


def test_statements_per_batch_do_not_grow_with_the_number_of_events(api, mail, publish, django_capture_on_commit_callbacks):
    publish(checkout_then_send())
    publish(checkout_then_send(rule="profile.plan == 'nobody'"))
    users = [f"s{i}" for i in range(60)]
    identify(api, django_capture_on_commit_callbacks, users)
    small = store(api, django_capture_on_commit_callbacks, checkouts(users[:5], tag="small"))
    large = store(api, django_capture_on_commit_callbacks, checkouts(users[5:], tag="large"))
    events_process(event_ids=small[:1])  # warm the trigger index and compiled versions

    with CaptureQueriesContext(connection) as few:
        assert events_process(event_ids=small[1:]) == 4
    with CaptureQueriesContext(connection) as many:
        assert events_process(event_ids=large) == 55

    # (SQLite splits a bulk INSERT at its variable limit: a statement or two more there)
    assert len(many.captured_queries) <= len(few.captured_queries) + 2, [q["sql"][:80] for q in many.captured_queries]
    assert Delivery.objects.count() == 60


def test_consent_personalization_and_holdout_apply_to_batched_messages(api, mail, publish, django_capture_on_commit_callbacks):
    publish(checkout_then_send())
    identify(api, django_capture_on_commit_callbacks, ["out", "plain", "full"])
    consent_set(customer=Customer.objects.get(external_id="out"), channel_kind="email", topic=None,
                status=ConsentStatus.OPTED_OUT, source="test")
    consent_set(customer=Customer.objects.get(external_id="plain"), channel_kind="", topic=topic("personalization"),
                status=ConsentStatus.OPTED_OUT, source="test")

    store(api, django_capture_on_commit_callbacks, checkouts(["out", "plain", "full"]), process=True)

    out = Delivery.objects.get(customer__external_id="out")
    assert (out.status, out.reason) == ("suppressed", "channel_opt_out")
    plain = Delivery.objects.get(customer__external_id="plain")
    assert plain.status == "sent" and "Plan -," in plain.body  # traits are not used without consent
    assert "Plan pro," in Delivery.objects.get(customer__external_id="full").body


def test_a_customers_events_in_one_batch_act_in_order(api, mail, publish, django_capture_on_commit_callbacks):
    waiting = publish({
        "trigger_kind": "event", "trigger_event": "Checkout Started", "reentry_policy": "once",
        "steps": [{"key": "wait", "kind": "wait_for_event", "config": {"event": "Order Completed", "timeout": "1h"}},
                  {"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "cart"}}],
        "edges": [{"from": "wait", "outcome": "event", "to": "send"}],
    })
    identify(api, django_capture_on_commit_callbacks, ["o", "p"])
    store(api, django_capture_on_commit_callbacks, [
        {"messageId": "o1", "userId": "o", "event": "Checkout Started", "properties": {"total": 1}},
        {"messageId": "p1", "userId": "p", "event": "Checkout Started", "properties": {"total": 2}},
        {"messageId": "o2", "userId": "o", "event": "Checkout Started", "properties": {"total": 3}},  # once: ignored
        {"messageId": "o3", "userId": "o", "event": "Order Completed", "properties": {"total": 4}},
    ], process=True)

    run_o = JourneyRun.objects.get(version=waiting, customer__external_id="o")
    assert (run_o.status, run_o.trigger_event.message_id) == ("completed", "o1")
    assert [(e.step_key, e.outcome) for e in run_o.executions.order_by("id")] == [("wait", "event"), ("send", "next")]
    assert Delivery.objects.get().customer.external_id == "o"
    assert JourneyRun.objects.get(version=waiting, customer__external_id="p").status == "waiting"


def test_one_open_run_per_customer_holds_inside_a_batch(api, mail, publish, django_capture_on_commit_callbacks):
    exclusive = publish({
        "trigger_kind": "event", "trigger_event": "Checkout Started", "reentry_policy": "always",
        "allow_concurrent_runs": False,
        "steps": [{"key": "pause", "kind": "delay", "config": {"duration": "1h"}}], "edges": [],
    })
    identify(api, django_capture_on_commit_callbacks, ["x"])
    store(api, django_capture_on_commit_callbacks, checkouts(["x"], tag="x1") + checkouts(["x"], tag="x2"), process=True)
    assert JourneyRun.objects.filter(version=exclusive).count() == 1


def test_a_failing_step_fails_only_its_run_in_a_batch(api, mail, publish, django_capture_on_commit_callbacks):
    ChannelFactory(name="doomed", kind="email", provider="console")
    broken = publish({**checkout_then_send(), "steps": [
        {"key": "check", "kind": "condition", "config": {"rule": "true"}},
        {"key": "send", "kind": "send_message", "config": {"channel": "doomed", "template": "cart"}}]})
    fine = publish(checkout_then_send())
    from channels_app.models import Channel

    Channel.objects.filter(name="doomed").delete()  # removed around the validation: the step raises
    identify(api, django_capture_on_commit_callbacks, ["f1", "f2"])

    store(api, django_capture_on_commit_callbacks, checkouts(["f1", "f2"]), process=True)

    failed = JourneyRun.objects.filter(version=broken)
    assert {r.status for r in failed} == {"failed"} and "Channel matching query does not exist" in failed[0].error
    assert JourneyRun.objects.filter(version=fine, status="completed").count() == 2
    assert Delivery.objects.count() == 2
    assert Event.objects.filter(name="Checkout Started", status="processed").count() == 2


def test_an_event_that_breaks_routing_fails_alone_and_the_batch_goes_on(api, mail, publish, django_capture_on_commit_callbacks):
    watch = publish({
        "trigger_kind": "inactivity", "trigger_event": "Checkout Started",
        "trigger_config": {"followed_by": "Order Completed", "within": "1h", "filter": "event.properties.total > 1000"},
        "steps": [{"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "cart"}}],
        "edges": [],
    })
    publish(checkout_then_send())
    WorkflowVersion.objects.filter(pk=watch.pk).update(
        trigger_config={"followed_by": "Order Completed", "within": "soon", "filter": "event.properties.total > 1000"})
    reset_caches()
    identify(api, django_capture_on_commit_callbacks, ["g1", "g2", "big"])

    store(api, django_capture_on_commit_callbacks,
          checkouts(["g1", "g2"]) + checkouts(["big"], tag="big", total=5000), process=True)

    bad = Event.objects.get(message_id="big-big")
    assert bad.status == "failed" and "within" in bad.error
    assert set(Event.objects.filter(status="processed", name="Checkout Started").values_list("message_id", flat=True)) == {
        "c-g1", "c-g2"}
    assert sorted(Delivery.objects.values_list("customer__external_id", flat=True)) == ["g1", "g2"]
    assert not JourneyRun.objects.filter(customer__external_id="big").exists()  # rolled back with its event


def test_a_processed_batch_is_not_processed_again(api, mail, publish, django_capture_on_commit_callbacks):
    publish(checkout_then_send())
    identify(api, django_capture_on_commit_callbacks, ["r1", "r2"])
    ids = store(api, django_capture_on_commit_callbacks, checkouts(["r1", "r2"]))
    with django_capture_on_commit_callbacks(execute=True):
        assert events_process(event_ids=ids) == 2
    with django_capture_on_commit_callbacks(execute=True):
        assert events_process(event_ids=ids) == 0  # a retried task finds them processed
    assert Delivery.objects.count() == 2 and JourneyRun.objects.count() == 2


def test_statements_for_resumed_runs_do_not_grow_with_the_number_of_events(api, mail, publish, django_capture_on_commit_callbacks):
    """Events that the customers' waiting runs wait for: each run's waiting step is closed and its
    next steps run, for the whole batch in a few statements (not a flush and an UPDATE per run)."""
    waiting = publish({
        "trigger_kind": "event", "trigger_event": "Checkout Started", "reentry_policy": "always",
        "steps": [{"key": "wait", "kind": "wait_for_event", "config": {"event": "Order Completed", "timeout": "1h"}},
                  {"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "cart"}}],
        "edges": [{"from": "wait", "outcome": "event", "to": "send"}],
    })
    users = [f"w{i}" for i in range(60)]
    identify(api, django_capture_on_commit_callbacks, users)
    store(api, django_capture_on_commit_callbacks, checkouts(users), process=True)
    assert JourneyRun.objects.filter(version=waiting, status="waiting").count() == 60
    orders = [{"messageId": f"o-{u}", "userId": u, "event": "Order Completed", "properties": {"total": 9}}
              for u in users]
    small = store(api, django_capture_on_commit_callbacks, orders[:5])
    large = store(api, django_capture_on_commit_callbacks, orders[5:])
    events_process(event_ids=small[:1])

    with CaptureQueriesContext(connection) as few:
        assert events_process(event_ids=small[1:]) == 4
    with CaptureQueriesContext(connection) as many:
        assert events_process(event_ids=large) == 55

    assert len(many.captured_queries) <= len(few.captured_queries) + 2, [q["sql"][:80] for q in many.captured_queries]
    runs = JourneyRun.objects.filter(version=waiting)
    assert set(runs.values_list("status", flat=True)) == {"completed"}
    steps = StepExecution.objects.filter(run__version=waiting)
    assert sorted(set(steps.values_list("step_key", "outcome"))) == [("send", "next"), ("wait", "event")]
    assert steps.count() == 120 and not steps.filter(finished_at__isnull=True).exists()
    assert Delivery.objects.count() == 60


def test_runs_resumed_at_different_visits_of_a_loop_are_closed_together(api, mail, publish, django_capture_on_commit_callbacks):
    """A reminder loop: each ping closes the wait and the run waits again (the next visit). Runs at
    many different visits resumed in one batch cost what runs at one visit cost, and every row of
    the visit they waited at is finished, no other."""
    loop = publish({
        "trigger_kind": "event", "trigger_event": "Checkout Started", "reentry_policy": "always",
        "steps": [{"key": "wait", "kind": "wait_for_event", "config": {"event": "Ping", "timeout": "1h"}},
                  {"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "cart"}}],
        "edges": [{"from": "wait", "outcome": "event", "to": "send"}, {"from": "send", "outcome": "next", "to": "wait"}],
    })
    users = [f"v{i}" for i in range(36)]
    identify(api, django_capture_on_commit_callbacks, users)
    store(api, django_capture_on_commit_callbacks, checkouts(users), process=True)

    def pings(who, tag):
        return [{"messageId": f"p-{tag}-{u}", "userId": u, "event": "Ping", "properties": {"total": 1}} for u in who]

    # Earlier pings, one batch per round: customer i has made i % 6 loops (waits at visit i % 6 + 1).
    for n in range(1, 6):
        store(api, django_capture_on_commit_callbacks, pings([u for i, u in enumerate(users) if i % 6 >= n], f"r{n}"),
              process=True)
    same_visit = [u for i, u in enumerate(users) if i % 6 == 0]  # six customers, all at visit 1
    few = store(api, django_capture_on_commit_callbacks, pings(same_visit[1:], "few"))
    many = store(api, django_capture_on_commit_callbacks, pings([u for u in users if u not in same_visit], "many"))
    events_process(event_ids=store(api, django_capture_on_commit_callbacks, pings(same_visit[:1], "warm")))

    with CaptureQueriesContext(connection) as at_one_visit:
        assert events_process(event_ids=few) == 5
    with CaptureQueriesContext(connection) as at_five_visits:
        assert events_process(event_ids=many) == 30

    def closes(captured, answers=False):  # the rows finished; and `answered_by` recorded on them
        return [q["sql"] for q in captured if q["sql"].startswith('UPDATE "journeys_stepexecution"')
                and ("answered_by" in q["sql"]) == answers]

    assert len(closes(at_one_visit)) == len(closes(at_five_visits)) == 1, closes(at_five_visits)
    assert len(closes(at_one_visit, True)) == len(closes(at_five_visits, True)) == 1, closes(at_five_visits, True)
    if connection.vendor == "postgresql":  # SQLite writes run states one UPDATE per distinct state (visits)
        assert len(at_five_visits.captured_queries) <= len(at_one_visit.captured_queries) + 2, (
            [q["sql"][:150] for q in at_five_visits.captured_queries])
    for i, user in enumerate(users):
        run = JourneyRun.objects.get(version=loop, customer__external_id=user)
        waits = list(StepExecution.objects.filter(run=run, step_key="wait").order_by("visit")
                     .values_list("visit", "outcome", "finished_at"))
        loops = i % 6 + 1
        assert run.status == "waiting" and run.visits["wait"] == loops + 1
        assert [(visit, outcome) for visit, outcome, _ in waits] == [
            *((v, "event") for v in range(1, loops + 1)), (loops + 1, "")]
        assert all(at is not None for _, _, at in waits[:-1]) and waits[-1][2] is None
    assert Delivery.objects.filter(run_id__in=JourneyRun.objects.filter(version=loop).values("pk")).count() == sum(
        i % 6 + 1 for i in range(36))
