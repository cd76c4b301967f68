"""The hourly stage refresh reads the customers due, not everyone (PostgreSQL), and still moves
every customer exactly when evaluating everyone would: rules on the clock (days since, days
until, hours since, tenure, last seen, events in a window, today), data changed by any writer,
late events, changed rules, and customers a worker holds."""

from __future__ import annotations

import datetime as dt
import random
import threading

import pytest
from django.db import connection

from journeys.engine.listeners import stages_reset
from journeys.engine.processor import events_process
from journeys.engine.scheduler import stages_refresh
from journeys.models import Customer, Event, LifecycleStage, StageRecheck
from journeys.rules import compile_rule
from journeys.services.segments import customer_rule_contexts, segment_plan
from tests.factories import make_source, row_held, select_rows

pytestmark = pytest.mark.django_db
on_postgres = pytest.mark.skipif(connection.vendor != "postgresql", reason="rechecks are PostgreSQL's")

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)

STAGES = [
    ("new", "profile.tenure_days < 7"),
    ("vip", "profile.ltv >= 1000 and events_in_last('Order', days=30) >= 2"),
    ("renewing", "0 <= days_until(profile.renewal_at) < 14"),
    ("trial", "hours_since(profile.trial_started) < 72"),
    ("dated", "date(profile.anniversary) == today()"),
    ("active", "profile.days_since_last_seen <= 30"),
    ("veteran", "days_since(profile.cohort_at) / 7 > 60"),  # the clock in arithmetic: looked at every time
    ("lapsed", "profile.days_since_last_seen > 30 or events_in_last('Order', days=90) == 0"),
]


@pytest.fixture(autouse=True)
def _fresh_stages():
    stages_reset()
    yield
    stages_reset()


def make_stages(stages=STAGES) -> None:
    LifecycleStage.objects.all().delete()
    for order, (key, rule) in enumerate(stages):
        LifecycleStage.objects.create(key=key, name=key, order=order, rule=rule)
    stages_reset()


def moment(rng: random.Random, choices) -> str:
    """ISO text of NOW + one of the offsets (or something that is not a plain ISO date)."""
    pick = rng.choice(choices)
    return (NOW + pick).isoformat() if isinstance(pick, dt.timedelta) else pick


def population(n: int = 150, seed: int = 7) -> list[Customer]:
    rng = random.Random(seed)
    days, hours = dt.timedelta(days=1), dt.timedelta(hours=1)
    customers = []
    for i in range(n):
        traits: dict = {}
        if rng.random() < 0.7:
            traits["ltv"] = rng.choice([500, 1000, 2500, "1000", None, True])
        if rng.random() < 0.5:
            traits["renewal_at"] = moment(rng, [3 * days, 13.5 * days, 14 * days, 20 * days, 40 * days,
                                                -2 * days, "not a date", "20260620", 17 * hours])
        if rng.random() < 0.4:
            traits["trial_started"] = moment(rng, [-hours, -71 * hours, -72 * hours, -90 * hours, 5 * hours])
        if rng.random() < 0.3:
            traits["anniversary"] = moment(rng, [0 * days, days, 2 * days, 30 * days, -days, "2026-06-03"])
        if rng.random() < 0.15:
            traits["cohort_at"] = moment(rng, [-400 * days, -419.5 * days, -421 * days, -500 * days, -days, 7])
        seen = rng.choice([None, 0.5, 1, 6.9, 7, 25, 29.5, 30, 31, 59, 61, 100])
        first = rng.choice([0, 2, 6.9, 7, 30, 400])
        customers.append(Customer(
            external_id=f"c{i}", traits=traits,
            first_seen=NOW - dt.timedelta(days=first),
            last_seen=None if seen is None else NOW - dt.timedelta(days=seen),
            stage=rng.choice(["", "", "", "active", "onboarding"]),  # onboarding: a stage steps own
        ))
    customers = Customer.objects.bulk_create(customers)
    source = make_source("rechecks")[0]
    Event.objects.bulk_create([
        Event(source=source, customer=c, name="Order", type="track", status="processed", properties={},
              timestamp=NOW - dt.timedelta(days=rng.choice([0.2, 1, 5, 29, 29.9, 31, 60, 89, 120, -3])),
              received_at=NOW)
        for c in customers for _ in range(rng.choice([0, 0, 1, 2, 3]))
    ])
    merged = customers[-1]
    Customer.objects.filter(pk=merged.pk).update(merged_into=customers[0])
    return customers


class Reference:
    """What evaluating every customer at every refresh gives (the Python evaluator)."""

    def __init__(self) -> None:
        self.stages = dict(Customer.objects.values_list("pk", "stage"))

    def refresh(self, now: dt.datetime, stages=STAGES) -> None:
        keys = {key for key, _ in stages}
        compiled = [(key, compile_rule(rule)) for key, rule in stages]
        customers = Customer.objects.filter(merged_into__isnull=True)
        for customer, ctx in customer_rule_contexts(customers=list(customers), now=now):
            if self.stages[customer.pk] and self.stages[customer.pk] not in keys:
                continue
            for key, rule in compiled:
                if rule.evaluate(ctx).value:
                    self.stages[customer.pk] = key
                    break


def steps() -> list[dt.timedelta]:
    hourly = [dt.timedelta(hours=h) for h in range(0, 50)]
    daily = [dt.timedelta(days=d) for d in range(3, 75)]
    return hourly + daily + [dt.timedelta(days=d) for d in (89.5, 90, 91, 121, 400, 700)]


@pytest.mark.parametrize("seed", [7, 23, 101])
def test_moving_through_time_the_due_customers_get_the_stages_that_everyone_evaluated_gets(seed):
    # given stage rules on the clock in every form, and a varied population
    make_stages()
    if connection.vendor == "postgresql":
        assert all(segment_plan(rule) == "sql" for _, rule in STAGES)
    population(seed=seed)
    reference = Reference()
    read, everyone, seen = [], Customer.objects.count(), set()
    for n, offset in enumerate(steps()):
        now = NOW + offset
        if n == 60:  # data changes through ORM updates, as imports, steps and the admin make them
            Customer.objects.filter(external_id__in=["c1", "c2", "c3"]).update(traits={"ltv": 5000})
            Customer.objects.filter(external_id__in=["c4", "c5"]).update(last_seen=now - dt.timedelta(days=2))
            Customer.objects.filter(external_id="c6").update(first_seen=now)
        # when the hourly refresh runs at this moment
        due = StageRecheck.objects.filter(due_at__lte=now).count()
        reference.refresh(now)
        stages_refresh(now=now)
        # then every customer is where evaluating everyone puts them
        got = dict(Customer.objects.values_list("pk", "stage"))
        assert got == reference.stages, f"at {offset}: " + ", ".join(
            f"{pk}: {got[pk]!r} != {reference.stages[pk]!r}" for pk in got if got[pk] != reference.stages[pk])
        read.append(due)
        seen |= set(got.values())
    assert seen >= {key for key, _ in STAGES}  # every rule put someone in its stage at some point
    if connection.vendor == "postgresql":
        # and after the first walk, a refresh read a fraction of the customers
        assert sum(read[1:]) / len(read[1:]) < everyone / 3, read


@on_postgres
def test_an_idle_hour_reads_no_customer():
    # given stages on the last visit and 300 customers seen in the last ten days, walked once
    make_stages([("active", "profile.days_since_last_seen <= 30"), ("lapsed", "profile.days_since_last_seen > 30")])
    Customer.objects.bulk_create([
        Customer(external_id=f"c{i}", last_seen=NOW - dt.timedelta(days=i % 10)) for i in range(300)])
    assert stages_refresh(now=NOW) == 300
    assert StageRecheck.objects.count() == 300
    # when the next hour's refresh runs
    with select_rows(Customer._meta.db_table) as rows:
        moved = stages_refresh(now=NOW + dt.timedelta(hours=1))
    # then it reads no customer row (the first can lapse in 21 days), and moves nobody
    assert moved == 0 and sum(rows) == 0, rows
    with select_rows(Customer._meta.db_table) as rows:
        assert stages_refresh(now=NOW + dt.timedelta(days=20, hours=23)) == 0
    assert sum(rows) == 0, rows
    # and at 21 days, only the ones whose moment came are read: seen 30 days ago, still active
    with select_rows(Customer._meta.db_table) as rows:
        moved = stages_refresh(now=NOW + dt.timedelta(days=21, hours=1))
    assert rows == [30, 30] and moved == 0, rows  # read, then locked to write their next moment
    assert stages_refresh(now=NOW + dt.timedelta(days=21, hours=2)) == 0  # not due again before 31 days
    assert stages_refresh(now=NOW + dt.timedelta(days=22, hours=1)) == 30  # those seen 9 days before NOW
    assert Customer.objects.filter(stage="lapsed").count() == 30


@on_postgres
def test_a_late_event_a_rule_counts_makes_its_customer_due():
    # given a stage on orders in the last 30 days, and a buyer whose order was two days ago, walked
    now = dt.datetime.now(dt.UTC)
    make_stages([("buyer", "events_in_last('Order', days=30) >= 1")])
    source = make_source("late")[0]
    customer = Customer.objects.create(external_id="late", last_seen=now, stage="buyer")
    viewer = Customer.objects.create(external_id="viewer", last_seen=now)

    def event(who: Customer, name: str, days: int) -> Event:
        return Event.objects.create(source=source, customer=who, name=name, type="track", properties={},
                                    timestamp=now - dt.timedelta(days=days), received_at=now, status="processed")

    event(customer, "Order", 2)
    stages_refresh(now=now)
    assert StageRecheck.objects.get(customer=customer).due_at == now + dt.timedelta(days=28)
    # when an order from twenty days ago arrives now (it changes no column of the customer, nor their
    # stage) and is processed, beside a late event of a name no rule counts
    late, viewed = event(customer, "Order", 20), event(viewer, "Viewed", 7)
    Event.objects.filter(pk__in=[late.pk, viewed.pk]).update(status="pending")
    events_process(event_ids=[late.pk, viewed.pk])
    assert Customer.objects.get(pk=customer.pk).stage == "buyer"
    # then the customer is due, and the refresh writes when the late order leaves the window
    assert StageRecheck.objects.filter(customer=customer, due_at__lte=now).exists()
    assert not StageRecheck.objects.filter(customer=viewer).exists()  # no rule counts what they did
    stages_refresh(now=now)
    assert StageRecheck.objects.get(customer=customer).due_at == late.timestamp + dt.timedelta(days=30)


@on_postgres
def test_changed_rules_walk_everyone_again():
    # given customers walked under one rule
    make_stages([("active", "profile.days_since_last_seen <= 30")])
    for i in range(20):
        Customer.objects.create(external_id=f"c{i}", last_seen=NOW - dt.timedelta(days=i * 3))
    assert stages_refresh(now=NOW) == 11
    assert stages_refresh(now=NOW) == 0
    # when the rule changes (nothing about the customers does)
    LifecycleStage.objects.filter(key="active").update(rule="profile.days_since_last_seen <= 10")
    LifecycleStage.objects.create(key="lapsed", name="lapsed", order=5, rule="profile.days_since_last_seen > 10")
    stages_reset()
    # then the next refresh, at the same moment, moves everyone the new rules move
    assert stages_refresh(now=NOW) == 16
    assert Customer.objects.filter(stage="active").count() == 4


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_customer_changed_after_the_refresh_read_them_is_not_moved_on_what_it_read():
    # given customers a rule would move to "lapsed"
    make_stages([("active", "profile.days_since_last_seen <= 30"), ("lapsed", "profile.days_since_last_seen > 30")])
    back, other = (Customer.objects.create(external_id=name, last_seen=NOW - dt.timedelta(days=40))
                   for name in ("back", "other"))

    def comes_back() -> None:  # another process records a visit and commits
        Customer.objects.filter(pk=back.pk).update(last_seen=NOW)
        connection.close()

    def visit_after_the_read(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith("SELECT") and "AS target" in sql:
            thread = threading.Thread(target=comes_back)
            thread.start()
            thread.join()
        return result

    # when one of them comes back between the refresh's read and its writes
    with connection.execute_wrapper(visit_after_the_read):
        assert stages_refresh(now=NOW) == 1
    # then the one who came back is not moved on the stale read, and stays due
    assert dict(Customer.objects.values_list("external_id", "stage")) == {"back": "", "other": "lapsed"}
    assert StageRecheck.objects.filter(customer=back, due_at__lte=NOW).exists()
    # and the next refresh puts them where they now belong
    assert stages_refresh(now=NOW + dt.timedelta(hours=1)) == 1
    assert Customer.objects.get(pk=back.pk).stage == "active"


CLOCK_FORMS = {
    "a clock value of a clock value": [("pm", "hours_since(today()) >= 14")],
    "today in a list": [("soon", "today() in [date('2026-06-02'), date('2026-06-03')]")],
    "a window read from the clock": [("today", "events_in_last('Order', hours=hours_since(today())) > 0"),
                                     ("none", "true")],
    "a number beyond the floats": [("young", "profile.tenure_days < 1" + "0" * 310), ("none", "true")],
    "stage events counted": [("moved", "events_in_last('Stage Entered', days=7) >= 2"),
                             ("b", "profile.days_since_last_seen > 3"), ("a", "profile.days_since_last_seen <= 3")],
}


@pytest.mark.parametrize("form", list(CLOCK_FORMS))
def test_every_clock_form_gives_what_evaluating_everyone_gives(form):
    # given stage rules reading the clock in an unusual way, and customers with orders and visits
    stages = CLOCK_FORMS[form]
    make_stages(stages)
    source = make_source("forms")[0]
    customers = Customer.objects.bulk_create([
        Customer(external_id=f"c{i}", first_seen=NOW - dt.timedelta(days=400),
                 last_seen=NOW - dt.timedelta(hours=7 * i)) for i in range(24)])
    Event.objects.bulk_create([
        Event(source=source, customer=c, name="Order", type="track", status="processed", properties={},
              timestamp=NOW - dt.timedelta(hours=5 * i), received_at=NOW) for i, c in enumerate(customers)])
    reference = Reference()
    # when the refresh runs every hour for three days
    for hour in range(72):
        now = NOW + dt.timedelta(hours=hour)
        reference.refresh(now, stages)  # on the data the refresh reads (not the Stage events it records)
        stages_refresh(now=now)
        # then everyone is where evaluating everyone puts them
        assert dict(Customer.objects.values_list("pk", "stage")) == reference.stages, f"hour {hour}"


@on_postgres
def test_merges_deleted_events_and_rules_put_back_make_customers_due():
    from journeys.services.event_storage import events_delete
    from journeys.services.identity import customer_merge

    # given a stage on orders in the last 30 days, walked
    now = dt.datetime.now(dt.UTC)
    make_stages([("buyer", "events_in_last('Order', days=30) >= 1"), ("none", "true")])
    source = make_source("moves")[0]
    target = Customer.objects.create(external_id="target", last_seen=now, first_seen=now - dt.timedelta(days=9))
    anonymous = Customer.objects.create(last_seen=now - dt.timedelta(days=1), first_seen=now - dt.timedelta(days=1))
    order = Event.objects.create(source=source, customer=anonymous, name="Order", type="track", properties={},
                                 timestamp=now - dt.timedelta(days=3), received_at=now, status="processed")
    stages_refresh(now=now)
    assert Customer.objects.get(pk=target.pk).stage == "none"
    # when a merge moves the order to the target (no column a stage rule reads changes)
    customer_merge(target=Customer.objects.get(pk=target.pk), merged=anonymous, reason="test", actor="test")
    # then the target is due, and the next refresh makes them a buyer
    assert StageRecheck.objects.filter(customer=target, due_at__lte=now).exists()
    stages_refresh(now=now + dt.timedelta(hours=1))
    assert Customer.objects.get(pk=target.pk).stage == "buyer"
    # and when the order is deleted (retention), they are due again and go back
    events_delete(ids=[order.pk])
    assert StageRecheck.objects.filter(customer=target, due_at__lte=now).exists()
    stages_refresh(now=now + dt.timedelta(hours=2))
    assert Customer.objects.get(pk=target.pk).stage == "none"
    # and rules taken away and put back walk everyone, changes made meanwhile included, whether a
    # refresh ran while there were none or not
    rules = dict(LifecycleStage.objects.values_list("key", "rule"))
    for hour, refresh_between, stage in ((3, True, "buyer"), (5, False, "none")):
        LifecycleStage.objects.update(rule="")
        stages_reset()
        if refresh_between:
            stages_refresh(now=now + dt.timedelta(hours=hour))
        if stage == "buyer":
            Event.objects.create(source=source, customer=target, name="Order", type="track", properties={},
                                 timestamp=now, received_at=now, status="processed")
        else:
            Event.objects.filter(customer=target).delete()  # not through events_delete: nobody is marked
        for key, rule in rules.items():
            LifecycleStage.objects.filter(key=key).update(rule=rule)
        stages_reset()
        stages_refresh(now=now + dt.timedelta(hours=hour + 1))
        assert Customer.objects.get(pk=target.pk).stage == stage


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_customer_held_during_the_walk_after_a_rules_change_is_walked_later():
    # given customers walked under one rule
    make_stages([("gold", "profile.plan == 'gold'")])
    held, other = (Customer.objects.create(external_id=name, last_seen=NOW - dt.timedelta(days=29))
                   for name in ("held", "other"))
    stages_refresh(now=NOW)
    assert not StageRecheck.objects.exists()  # no clock in that rule
    # when the rules change and a worker holds one customer during the walk
    make_stages([("gold", "profile.plan == 'gold'"), ("lapsed", "profile.days_since_last_seen > 30")])
    with row_held(Customer, held.pk):
        stages_refresh(now=NOW)
    # then the one held is due, and moves when its day comes like the other
    assert StageRecheck.objects.filter(customer=held, due_at__lte=NOW).exists()
    assert stages_refresh(now=NOW + dt.timedelta(days=2)) == 2
    assert set(Customer.objects.values_list("stage", flat=True)) == {"lapsed"}
