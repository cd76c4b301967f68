"""A frequent customer's history: the entry checks (same trigger, re-entry once or cooldown,
one open run) decide on the thousandth entry as on the first, in every entry path (the event
batch, one event at a time, a workflow started by a step or an agent, bulk enrolment, dry runs),
and read the few past runs they need, not every run the customer ever had."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from journeys.engine.compiled import load_version
from journeys.engine.enrolment import runs_enroll_bulk
from journeys.engine.entry_gate import entry_history
from journeys.engine.processor import events_process
from journeys.engine.runner import entry_refusal, run_enroll
from journeys.models import BusinessUnit, Customer, JourneyRun
from journeys.rules import RuleContext
from journeys.services.dry_run import version_dry_run
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.factories import pending_events, select_rows

pytestmark = pytest.mark.django_db

PAST = 400  # closed runs of a frequent buyer in the thank-you journey, one a day
WAIT = {"steps": [{"key": "wait", "kind": "delay", "config": {"duration": "7d"}}]}
_sources = itertools.count()
DONE = {"steps": [{"key": "done", "kind": "goal", "config": {}}]}


def publish(policy: str, *, cooldown: int = 0, steps: dict = DONE, concurrent: bool = False):
    unit, _ = BusinessUnit.objects.get_or_create(slug="shop", defaults={"name": "Shop"})
    workflow = workflow_create(name=f"thanks-{policy}-{cooldown}", business_unit=unit)
    definition = {"trigger_event": "Order Completed", "reentry_policy": policy, "reentry_cooldown_s": cooldown,
                  "allow_concurrent_runs": concurrent, **steps}
    return load_version(version_publish(version=version_build(workflow=workflow, definition=definition), reason="t").pk)


def frequent_buyer(version, name: str, *, last_days_ago: float, open_run: bool = False) -> Customer:
    """A customer with PAST closed runs in the workflow, the newest `last_days_ago` days old, left
    by an earlier version that did not limit entries: no entry gate row, so only the run history
    can refuse them. With `open_run`, one run still waiting, started while concurrent runs were
    allowed (not exclusive: no unique index covers it either)."""
    now = timezone.now()
    customer = Customer.objects.create(external_id=name, email=f"{name}@example.com")
    runs = JourneyRun.objects.bulk_create(
        JourneyRun(workflow_id=version.workflow_id, version_id=version.id, customer=customer, trigger_key=f"old:{i}",
                   status="completed", current_step="done", finished_at=now)
        for i in range(PAST))
    for i, run in enumerate(runs):  # created_at is set on insert: date them afterwards
        run.created_at = now - timedelta(days=last_days_ago + i)
    JourneyRun.objects.bulk_update(runs, ["created_at"], batch_size=100)
    if open_run:
        JourneyRun.objects.create(workflow_id=version.workflow_id, version_id=version.id, customer=customer,
                                  trigger_key="open", status="waiting", current_step="wait", exclusive=False)
    return customer


def runs_of(customer, version) -> int:
    return JourneyRun.objects.filter(customer=customer, workflow_id=version.workflow_id).count()


def order(customers) -> None:
    ids = pending_events(customers, name="Order Completed", source=f"shop-{next(_sources)}")
    assert events_process(event_ids=ids) == len(ids)


def test_the_event_batch_applies_the_cooldown_to_a_long_history():
    version = publish("cooldown", cooldown=86400)
    due = frequent_buyer(version, "due", last_days_ago=2)
    recent = frequent_buyer(version, "recent", last_days_ago=0.5)
    new = Customer.objects.create(external_id="new")

    order([due, recent, new])

    assert (runs_of(due, version), runs_of(recent, version), runs_of(new, version)) == (PAST + 1, PAST, 1)
    order([due, new])  # again at once: both are inside the cooldown now
    assert (runs_of(due, version), runs_of(new, version)) == (PAST + 1, 1)


def test_the_event_batch_refuses_a_second_entry_once_and_a_second_open_run():
    once = publish("once")
    entered = frequent_buyer(once, "entered", last_days_ago=300)
    waiting = publish("always", steps=WAIT)
    busy = frequent_buyer(waiting, "busy", last_days_ago=1, open_run=True)
    free = frequent_buyer(waiting, "free", last_days_ago=1)

    order([entered, busy, free])

    assert runs_of(entered, once) == PAST
    assert runs_of(busy, waiting) == PAST + 1  # the open run it had, no second one
    assert runs_of(free, waiting) == PAST + 1
    assert JourneyRun.objects.filter(customer=free, status="waiting").count() == 1


def test_one_entry_at_a_time_and_bulk_enrolment_apply_the_same_limits():
    version = publish("cooldown", cooldown=86400)
    due = frequent_buyer(version, "due", last_days_ago=2)
    recent = frequent_buyer(version, "recent", last_days_ago=0.5)
    now = timezone.now()

    assert run_enroll(version=version, customer=recent, trigger_key="step:1", now=now) is None
    assert run_enroll(version=version, customer=due, trigger_key="old:7", now=now) is None  # that trigger entered before
    assert run_enroll(version=version, customer=due, trigger_key="step:1", now=now) is not None
    assert run_enroll(version=version, customer=due, trigger_key="step:2", now=now) is None

    other = publish("always", steps=WAIT)
    busy = frequent_buyer(other, "busy", last_days_ago=1, open_run=True)
    free = frequent_buyer(other, "free", last_days_ago=1)
    result = runs_enroll_bulk(version=other, customer_ids=[busy.pk, free.pk], trigger_key="old:3", now=now)
    assert (result.enrolled, result.skipped) == (0, 2)  # both entered for that occasion before
    result = runs_enroll_bulk(version=other, customer_ids=[busy.pk, free.pk], trigger_key="campaign:9", now=now)
    assert (result.enrolled, result.skipped) == (1, 1)
    assert runs_of(free, other) == PAST + 1


def test_a_dry_run_names_the_limit_a_long_history_hits():
    version = publish("cooldown", cooldown=86400)
    recent = frequent_buyer(version, "recent", last_days_ago=0.5)
    due = frequent_buyer(version, "due", last_days_ago=2)
    event = {"name": "Order Completed"}

    assert version_dry_run(version=version, customer=recent, event=event).reason == "entered within the cooldown of 86400s"
    assert version_dry_run(version=version, customer=due, event=event).entered

    once = publish("once")
    entered = frequent_buyer(once, "entered", last_days_ago=300)
    assert version_dry_run(version=once, customer=entered, event=event).reason == "already entered once (re-entry policy: once)"
    waiting = publish("always", steps=WAIT)
    busy = frequent_buyer(waiting, "busy", last_days_ago=1, open_run=True)
    assert version_dry_run(version=waiting, customer=busy, event=event).reason == "already has an open run in this workflow"


HISTORIES = {  # (trigger key, status, age in seconds, exclusive) of a customer's runs in the workflow
    "none": [],
    "old": [("k1", "completed", 10 * 86400, True)],
    "recent": [("k1", "completed", 600, True)],
    "open": [("k1", "waiting", 10 * 86400, True)],
    "open, not exclusive": [("k1", "active", 10 * 86400, False), ("k2", "active", 10 * 86400, False)],
    "same trigger": [("new", "exited", 10 * 86400, True)],
    "same trigger, failed": [("new", "failed", 60, True), ("z", "completed", 20 * 86400, True)],
    "dated ahead": [("k9", "completed", -3600, True)],
}


@pytest.mark.parametrize("policy, concurrent", list(itertools.product(["once", "cooldown", "always"], [True, False])))
def test_the_runs_read_decide_every_entry_as_the_whole_history_would(policy, concurrent):
    version = publish(policy, cooldown=3600, concurrent=concurrent)
    other = publish("once", cooldown=1)  # another workflow's runs never count
    now = timezone.now()
    customers = []
    for name, runs in HISTORIES.items():
        customer = Customer.objects.create(external_id=name)
        customers.append(customer)
        for key, status, age, exclusive in runs:
            run = JourneyRun.objects.create(workflow_id=version.workflow_id, version_id=version.id, customer=customer,
                                            trigger_key=key, status=status, exclusive=exclusive)
            JourneyRun.objects.filter(pk=run.pk).update(created_at=now - timedelta(seconds=age))
        JourneyRun.objects.create(workflow_id=other.workflow_id, version_id=other.id, customer=customer,
                                  trigger_key="new", status="waiting")
    ctx = RuleContext(now=now)

    def decide(customer, key, rows) -> str | None:
        if key is not None and any(k == key for k, _, _ in rows):
            return "entered for this trigger"
        return entry_refusal(version=version, customer=customer, ctx=ctx, now=now, previous=[(s, t) for _, s, t in rows])

    for keys in (["new"], ["k1"], [None], ["new", "k1", None]):
        read = entry_history(wanted=[(version, c.pk, k) for c in customers for k in keys], now=now)
        for customer in customers:
            rows = read[(version.workflow_id, customer.pk)]
            everything = list(JourneyRun.objects.filter(workflow_id=version.workflow_id, customer=customer)
                              .values_list("trigger_key", "status", "created_at"))
            assert set(rows) <= set(everything)
            for key in keys:
                assert decide(customer, key, rows) == decide(customer, key, everything), (customer.external_id, key)


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="row counts of SELECTs (SQLite's cursor has none)")
@pytest.mark.parametrize("policy, cooldown", [("cooldown", 86400), ("once", 0), ("always", 0)])
def test_an_entry_reads_the_runs_it_needs_not_the_whole_history(policy, cooldown):
    """What the run history costs an entry does not grow with the history: the statements on
    the runs table return a handful of rows for a customer with hundreds of past runs."""
    version = publish(policy, cooldown=cooldown)
    buyers = [frequent_buyer(version, f"b{i}", last_days_ago=2) for i in range(3)]
    with select_rows("journeys_journeyrun") as rows:
        order(buyers)
        run_enroll(version=version, customer=buyers[0], trigger_key="step:1", now=timezone.now())
        runs_enroll_bulk(version=version, customer_ids=[b.pk for b in buyers], trigger_key="campaign:1",
                         now=timezone.now())
    assert rows and sum(rows) <= 30, rows
