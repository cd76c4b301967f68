"""The hourly segment-entry refresh compares the customers due, not everyone (PostgreSQL), and
still records and enrols exactly who evaluating everyone says joined: rules on the clock, data
changed by any writer, late events, go-lives, and customers changed or held meanwhile."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import DatabaseError, connection, transaction

from journeys.choices import RunStatus
from journeys.engine.compiled import load_version
from journeys.engine.enrolment import Candidate, enroll_candidates
from journeys.engine.processor import events_process
from journeys.engine.scheduler import segment_entries_refresh, stages_refresh
from journeys.models import (
    BusinessUnit,
    Customer,
    Event,
    JourneyRun,
    SegmentMember,
    SegmentRecheck,
    Source,
    StageRecheck,
)
from journeys.rules import compile_rule
from journeys.services.governance import workflow_pause_set
from journeys.services.rechecks import customers_recheck
from journeys.services.segments import customer_rule_contexts, segment_plan
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.factories import make_source, row_held, select_rows
from tests.journeys.test_stage_rechecks import NOW, make_stages, population, steps

pytestmark = pytest.mark.django_db
on_postgres = pytest.mark.skipif(connection.vendor != "postgresql", reason="rechecks are PostgreSQL's")
H = dt.timedelta(hours=1)

RULES = [
    "profile.days_since_last_seen > 30 or events_in_last('Order', days=90) == 0",
    "0 <= days_until(profile.renewal_at) < 14 or hours_since(profile.trial_started) < 72",
    "profile.ltv >= 1000 and events_in_last('Order', days=30) >= 2",
    "date(profile.anniversary) == today() or profile.tenure_days < 7",
    "days_since(profile.cohort_at) / 7 > 60",  # the clock in arithmetic: compared every time
]


def publish(rule: str, name: str = "entry"):
    unit, _ = BusinessUnit.objects.get_or_create(slug="seg", defaults={"name": "Seg"})
    workflow = workflow_create(name=name, business_unit=unit)
    definition = {"trigger_kind": "segment_entry", "trigger_config": {"rule": rule}, "reentry_policy": "always",
                  "steps": [{"key": "done", "kind": "goal", "config": {}}]}
    return version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")


def selected(rule: str, now: dt.datetime) -> set[int]:
    """Who evaluating every customer in Python puts in the segment."""
    return selected_each([rule], now)[0]


def selected_each(rules: list[str], now: dt.datetime) -> list[set[int]]:
    """`selected` of each rule, the customers and what the rules see of them read once for all."""
    compiled = [compile_rule(rule) for rule in rules]
    chosen: list[set[int]] = [set() for _ in rules]
    customers = list(Customer.objects.filter(merged_into__isnull=True))
    for customer, ctx in customer_rule_contexts(customers=customers, now=now):
        for rule, picked in zip(compiled, chosen):
            if rule.evaluate(ctx).value:
                picked.add(customer.pk)
    return chosen


def order(customer: Customer, at: dt.datetime, status: str = "pending") -> Event:
    source = Source.objects.filter(name="late").first() or make_source("late")[0]
    return Event.objects.create(source=source, customer=customer, name="Order", type="track", properties={},
                                timestamp=at, received_at=dt.datetime.now(dt.UTC), status=status)


def members(version) -> set[int]:
    return set(SegmentMember.objects.filter(version_id=version.pk).values_list("customer_id", flat=True))


@pytest.mark.parametrize("seed", [7, 101])
def test_moving_through_time_the_due_customers_give_the_members_and_entries_everyone_gives(seed):
    # given live segment-entry triggers on the clock in many forms, and a varied population
    if connection.vendor == "postgresql":
        assert all(segment_plan(rule) == "sql" for rule in RULES)
    versions = [publish(rule, name=f"w{i}") for i, rule in enumerate(RULES)]
    population(seed=seed)
    before = {v.pk: set() for v in versions}
    read, everyone = [], Customer.objects.count()
    for n, offset in enumerate(steps()):
        now = NOW + offset
        if n == 60:  # data changes through ORM updates, as imports, steps and the admin make them
            Customer.objects.filter(external_id__in=["c1", "c2", "c3"]).update(traits={"ltv": 5000})
            Customer.objects.filter(external_id__in=["c4", "c5"]).update(last_seen=now - dt.timedelta(days=2))
            Customer.objects.create(external_id="new", first_seen=now, last_seen=now)
        if n == 80:  # late orders, processed (they change no column of their customer)
            late = [order(c, now - dt.timedelta(days=20))
                    for c in Customer.objects.filter(merged_into__isnull=True).order_by("pk")[:40]]
            events_process(event_ids=[e.pk for e in late])
        runs = {v.pk: JourneyRun.objects.filter(version=v).count() for v in versions}
        # when the hourly refresh runs at this moment
        due = SegmentRecheck.objects.filter(due_at__lte=now).count()
        segment_entries_refresh(now=now)
        JourneyRun.objects.filter(created_at__gt=now).update(created_at=now)  # made at this (simulated) moment
        # then each trigger's members are who evaluating everyone selects
        for rule, version, want in zip(RULES, versions, selected_each(RULES, now)):
            assert members(version) == want, (offset, rule, sorted(members(version) ^ want))
            # and each who joined since the last refresh entered once (at go-live, nobody;
            # after the late events, not those the event path entered)
            made, joined = JourneyRun.objects.filter(version=version).count() - runs[version.pk], want - before[version.pk]
            assert made == (0 if n == 0 else len(joined)) or (n == 80 and made <= len(joined)), (offset, rule)
            before[version.pk] = want
        read.append(due)
    assert sum(JourneyRun.objects.filter(version=v).exists() for v in versions) >= 3  # joins happened
    if connection.vendor == "postgresql":
        # and after the first walk, a refresh compared a fraction of the customers
        assert sum(read[1:]) / len(read[1:]) < everyone / 3, read


@on_postgres
def test_an_idle_hour_reads_no_customer_and_a_due_day_reads_those_due():
    # given a trigger on the last visit and 300 customers seen in the last ten days, walked once
    version = publish("profile.days_since_last_seen > 30")
    Customer.objects.bulk_create([
        Customer(external_id=f"c{i}", last_seen=NOW - dt.timedelta(days=i % 10)) for i in range(300)])
    segment_entries_refresh(now=NOW)
    assert SegmentRecheck.objects.count() == 300
    # when the next hour's refresh runs
    with select_rows(Customer._meta.db_table) as rows:
        assert segment_entries_refresh(now=NOW + dt.timedelta(hours=1)) == 0
    # then it reads no customer row
    assert sum(rows) == 0, rows
    # and when the first of them lapse, only those due are read, and they enter once
    with select_rows(Customer._meta.db_table) as rows:
        assert segment_entries_refresh(now=NOW + dt.timedelta(days=21, hours=1)) == 0
    assert rows == [30, 30], rows  # seen 30 days ago: read (then held to write their next moment), not yet in
    assert segment_entries_refresh(now=NOW + dt.timedelta(days=21, hours=2)) == 0  # not due again before 31 days
    assert segment_entries_refresh(now=NOW + dt.timedelta(days=22, hours=1)) == 30
    assert len(members(version)) == 30 and not SegmentRecheck.objects.filter(
        customer_id__in=members(version)).exists()  # in for good unless their data changes


@on_postgres
def test_a_late_event_a_rule_counts_makes_its_customer_due():
    # given a trigger on two orders in 30 days and a buyer with one order, walked
    now = dt.datetime.now(dt.UTC)
    version = publish("events_in_last('Order', days=30) >= 2")
    buyer = Customer.objects.create(external_id="buyer", last_seen=now)
    order(buyer, now - dt.timedelta(days=2), status="processed")
    segment_entries_refresh(now=now)
    assert SegmentRecheck.objects.get(customer=buyer).due_at == now + dt.timedelta(days=28)
    # when an order from twenty days ago arrives and is processed
    late = order(buyer, now - dt.timedelta(days=20))
    events_process(event_ids=[late.pk])
    JourneyRun.objects.all().delete()
    # then the buyer is due, and the next refresh records them (the event path entered them)
    assert SegmentRecheck.objects.filter(customer=buyer, due_at__lte=now).exists()
    segment_entries_refresh(now=now + dt.timedelta(minutes=1))
    assert members(version) == {buyer.pk}


@on_postgres
def test_a_new_version_going_live_walks_everyone_and_records_without_entering():
    # given customers compared under one live trigger
    publish("profile.plan == 'pro'", name="pro")
    for i in range(10):
        Customer.objects.create(external_id=f"c{i}", traits={"plan": "pro" if i < 4 else "free", "vip": i % 2 == 0})
    segment_entries_refresh(now=NOW)
    assert SegmentRecheck.objects.count() == 0  # no clock, nothing changed since
    # when another trigger goes live
    vip = publish("profile.vip == true", name="vip")
    segment_entries_refresh(now=NOW + dt.timedelta(hours=1))
    # then its members are recorded from everyone, nobody enters, and later joiners do
    assert len(members(vip)) == 5 and not JourneyRun.objects.exists()
    Customer.objects.filter(external_id="c5").update(traits={"plan": "pro", "vip": True})
    assert segment_entries_refresh(now=NOW + dt.timedelta(hours=2)) == 2
    assert set(JourneyRun.objects.values_list("customer__external_id", flat=True)) == {"c5"}


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_customer_changed_after_the_refresh_read_them_is_not_compared_on_what_it_read():
    # given a trigger on lapsed customers, walked, and two who lapse at the next moment
    version = publish("profile.days_since_last_seen > 30")
    back, other = (Customer.objects.create(external_id=name, last_seen=NOW - dt.timedelta(days=31, hours=-1))
                   for name in ("back", "other"))
    segment_entries_refresh(now=NOW)

    def comes_back() -> None:  # another process records a visit and commits
        Customer.objects.filter(pk=back.pk).update(last_seen=NOW)
        connection.close()

    def visit_after_the_read(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith("SELECT") and "AS states" in sql:
            thread = threading.Thread(target=comes_back)
            thread.start()
            thread.join()
        return result

    # when one of them comes back between the refresh's read and its writes
    with connection.execute_wrapper(visit_after_the_read):
        assert segment_entries_refresh(now=NOW + dt.timedelta(hours=2)) == 1
    # then the one who came back is not entered on the stale read, and stays due
    assert members(version) == {other.pk}
    assert SegmentRecheck.objects.filter(customer=back, due_at__lte=NOW).exists()
    assert segment_entries_refresh(now=NOW + dt.timedelta(hours=3)) == 0
    assert members(version) == {other.pk}


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_customer_held_by_a_worker_stays_due_and_is_compared_once_released():
    # given a trigger on a trait, walked, and two customers who come into it with no event
    version = publish("profile.plan == 'gold'")
    held, other = (Customer.objects.create(external_id=name) for name in ("held", "other"))
    segment_entries_refresh(now=NOW)
    Customer.objects.update(traits={"plan": "gold"})
    # when a worker holds one of them (a step changing its traits) during the refresh
    with row_held(Customer, held.pk):
        assert segment_entries_refresh(now=NOW + dt.timedelta(hours=1)) == 1
    # then the one held is still due, and enters at the next refresh
    assert members(version) == {other.pk}
    assert SegmentRecheck.objects.filter(customer=held, due_at__lte=NOW).exists()
    assert segment_entries_refresh(now=NOW + dt.timedelta(hours=2)) == 1
    assert members(version) == {held.pk, other.pk}


@on_postgres
def test_a_rule_that_does_not_translate_is_walked_and_the_others_still_follow_their_rechecks():
    # given a live trigger whose rule only Python answers, beside one that translates
    odd = publish("profile.total % 2 == 0", name="odd")
    lapsed = publish("profile.days_since_last_seen > 30", name="lapsed")
    assert segment_plan("profile.total % 2 == 0") == "python"
    Customer.objects.bulk_create([Customer(external_id=f"c{i}", traits={"total": i},
                                           last_seen=NOW - dt.timedelta(days=i % 10)) for i in range(40)])
    segment_entries_refresh(now=NOW)
    assert len(members(odd)) == 20 and SegmentRecheck.objects.count() == 40
    # when time passes and a total changes with no event
    Customer.objects.filter(external_id="c1").update(traits={"total": 2})
    with select_rows(Customer._meta.db_table) as rows:
        assert segment_entries_refresh(now=NOW + dt.timedelta(hours=1)) == 1
    # then the Python rule was walked whole and the other read only the one marked
    assert members(odd) == selected("profile.total % 2 == 0", NOW) and len(members(odd)) == 21
    assert 40 in rows and rows.count(1) >= 1, rows
    assert segment_entries_refresh(now=NOW + dt.timedelta(days=22, hours=1)) == 4  # seen 9 days before NOW
    assert members(lapsed) == selected("profile.days_since_last_seen > 30", NOW + dt.timedelta(days=22, hours=1))


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_customer_held_during_the_go_live_walk_is_not_entered_afterwards():
    # given a trigger going live on a trait two customers already have
    version = publish("profile.plan == 'gold'")
    held, other = (Customer.objects.create(external_id=n, traits={"plan": "gold"}) for n in ("held", "other"))
    # when a worker holds one of them during the first (go-live) refresh
    with row_held(Customer, held.pk):
        assert segment_entries_refresh(now=NOW) == 0
    # then neither ever enters: both were in the segment at go-live and nothing changed
    assert segment_entries_refresh(now=NOW + H) == 0, "the customer held at go-live entered"
    assert members(version) == {held.pk, other.pk}
    assert not JourneyRun.objects.exists()


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_customer_the_event_path_entered_is_not_entered_again_when_compared_one_refresh_late():
    # given a live trigger, walked at go-live, and a customer not in its segment
    version = publish("profile.plan == 'gold'")
    c = Customer.objects.create(external_id="c", traits={"plan": "free"})
    segment_entries_refresh(now=NOW)
    # when the customer comes in through an event (traits written, the event path enrols them; the run ends)
    Customer.objects.filter(pk=c.pk).update(traits={"plan": "gold"})
    enroll_candidates(version=load_version(version.pk), candidates=[Candidate(customer_id=c.pk, trigger_key="profile:1")],
                      now=NOW + 1.5 * H)
    JourneyRun.objects.update(created_at=NOW + 1.5 * H, status=RunStatus.COMPLETED)
    # and a worker holds them during the next refresh (they stay due), then the refresh after runs
    with row_held(Customer, c.pk):
        assert segment_entries_refresh(now=NOW + 2 * H) == 0
    segment_entries_refresh(now=NOW + 3 * H)
    # then they entered once (the event path), as comparing everyone at NOW+2h would leave it
    assert members(version) == {c.pk}
    assert JourneyRun.objects.filter(customer=c).count() == 1, "entered twice for one join"


@on_postgres
def test_an_event_counted_while_the_workflow_was_paused_between_two_refreshes_is_not_lost():
    # given a trigger on two orders in 30 days, walked, and a buyer with one order
    now = dt.datetime.now(dt.UTC)
    version = publish("events_in_last('Order', days=30) >= 2")
    buyer = Customer.objects.create(external_id="buyer", last_seen=now)
    order(buyer, now - dt.timedelta(days=2), status="processed")
    segment_entries_refresh(now=now)
    assert members(version) == set()
    # when the workflow is paused for a few minutes (between two refreshes) while a late order is processed
    workflow_pause_set(workflow=version.workflow, paused=True, reason="maintenance")
    late = order(buyer, now - dt.timedelta(days=20))
    events_process(event_ids=[late.pk])
    workflow_pause_set(workflow=version.workflow, paused=False, reason="maintenance over")
    # then the next refresh compares the buyer (now in the segment) and enters them
    segment_entries_refresh(now=now + dt.timedelta(minutes=5))
    assert members(version) == {buyer.pk}, "the buyer's new count was never compared"
    assert JourneyRun.objects.filter(customer=buyer).count() == 1


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_write_in_flight_when_rechecks_start_is_not_lost():
    # given a live trigger that has never been refreshed (first deploy, or after a Python
    # fallback / no live version: no SegmentRules row, so the customer trigger marks nobody)
    version = publish("profile.plan == 'gold'")
    a = Customer.objects.create(external_id="a", traits={"plan": "free"})
    updated, release = threading.Event(), threading.Event()

    def import_in_flight() -> None:  # an import updates the trait, commits after the refresh
        with transaction.atomic():
            Customer.objects.filter(pk=a.pk).update(traits={"plan": "gold"})
            updated.set()
            release.wait(3)  # commits a moment later (or once the refresh is done)
        connection.close()

    thread = threading.Thread(target=import_in_flight)
    thread.start()
    try:
        assert updated.wait(10)
        assert segment_entries_refresh(now=NOW) == 0  # go-live walk: 'a' is read as it was
    finally:
        release.set()
        thread.join()
    # then, once it committed, the next refresh has 'a' as a member (as comparing everyone would;
    # entered too, unless the walk waited for the import and recorded them at go-live)
    entered = segment_entries_refresh(now=NOW + H)
    assert members(version) == {a.pk}, "the imported change was never compared"
    assert entered == JourneyRun.objects.count() <= 1


@on_postgres
def test_a_mark_for_a_customer_deleted_meanwhile_waits_on_nothing_and_is_dropped_by_the_refresh():
    # given stage and segment-entry rules that count orders, walked
    make_stages([("buyer", "events_in_last('Order', days=30) >= 1")])
    publish("events_in_last('Order', days=30) >= 2")
    gone, kept = (Customer.objects.create(external_id=name, last_seen=NOW) for name in ("gone", "kept"))
    stages_refresh(now=NOW)
    segment_entries_refresh(now=NOW)
    # when a customer is deleted and a late mark names them (a retention pass that read their events before)
    gone_pk = gone.pk
    gone.delete()
    customers_recheck([(gone_pk, "Order"), (kept.pk, "Order")])
    assert StageRecheck.objects.filter(customer_id=gone_pk).exists()  # no foreign key: nothing waited or failed
    assert SegmentRecheck.objects.filter(customer_id=gone_pk).exists()
    # then the next refreshes drop the marks of the customer who is gone, and compare the other
    stages_refresh(now=NOW + H)
    segment_entries_refresh(now=NOW + H)
    assert not StageRecheck.objects.filter(customer_id=gone_pk).exists()
    assert not SegmentRecheck.objects.filter(customer_id=gone_pk).exists()
    assert not SegmentRecheck.objects.filter(customer=kept, due_at__lte=NOW + H).exists()


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_write_committed_between_the_go_live_walks_read_and_its_lock_is_compared_later():
    # given a live trigger never refreshed (no rechecks yet: the customer trigger marks nobody)
    version = publish("profile.plan == 'gold'")
    a = Customer.objects.create(external_id="a", traits={"plan": "free"})
    updated, release = threading.Event(), threading.Event()

    def import_in_flight() -> None:  # an import updates the trait before the walk starts ...
        with transaction.atomic():
            Customer.objects.filter(pk=a.pk).update(traits={"plan": "gold"})
            updated.set()
            release.wait(10)  # ... and commits just after the walk read 'a' (before it locks 'a')
        connection.close()

    thread = threading.Thread(target=import_in_flight)

    def commit_after_the_read(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith("SELECT") and "AS states" in sql and thread.is_alive():
            release.set()
            thread.join()
        return result

    thread.start()
    try:
        assert updated.wait(10)
        with connection.execute_wrapper(commit_after_the_read):
            segment_entries_refresh(now=NOW)
    finally:
        release.set()
        thread.join()
    # then the next refresh compares 'a' again (its row changed after the read) and has it as a member
    segment_entries_refresh(now=NOW + H)
    assert members(version) == {a.pk}


def deadlock_on(chunk_of: int):
    """A database fault: the refresh's customer lock of the chunk holding this customer fails once
    as PostgreSQL fails a deadlock's victim."""
    from django.db import OperationalError

    failed = []

    def wrapper(execute, sql, params, many, context):
        if "FOR NO KEY UPDATE SKIP LOCKED" in sql and f"{{{chunk_of}}}" in str(params) and not failed:
            failed.append(sql)
            raise OperationalError("deadlock detected")
        return execute(sql, params, many, context)

    return wrapper, failed


@on_postgres
def test_a_go_live_walk_whose_chunk_deadlocked_still_records_who_was_in_and_enters_later_joiners(monkeypatch):
    # given a trigger going live, a customer a chunk, and the second chunk's lock failing once
    from journeys.engine import segment_entries

    version = publish("profile.plan == 'gold'")
    c1, c2, c3 = (Customer.objects.create(external_id=n, traits={"plan": p})
                  for n, p in (("c1", "free"), ("c2", "free"), ("c3", "gold")))
    monkeypatch.setattr(segment_entries, "CHUNK", 1)
    wrapper, failed = deadlock_on(c3.pk)
    with connection.execute_wrapper(wrapper):
        segment_entries_refresh(now=NOW)
    assert failed and members(version) == {c3.pk}  # in at go-live, recorded from the read
    # when c1 comes in with no event during the next hour
    Customer.objects.filter(pk=c1.pk).update(traits={"plan": "gold"})
    # then c1 enters (a join after go-live), and c3 does not (in at go-live)
    assert segment_entries_refresh(now=NOW + H) == 1
    assert set(JourneyRun.objects.values_list("customer_id", flat=True)) == {c1.pk}
    assert members(version) == {c1.pk, c3.pk}


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_version_live_later_counts_from_when_it_recorded_a_customer_left_uncompared_by_the_others():
    # given trigger A, walked; then trigger B goes live, and the event path enters c into B's
    # workflow before B's first refresh
    publish("profile.plan == 'gold'", name="a")
    c = Customer.objects.create(external_id="c", traits={"plan": "free", "vip": False})
    segment_entries_refresh(now=NOW)
    b = publish("profile.vip == true", name="b")
    enroll_candidates(version=load_version(b.pk), candidates=[Candidate(customer_id=c.pk, trigger_key="profile:1")],
                      now=NOW + 0.5 * H)
    JourneyRun.objects.update(created_at=NOW + 0.5 * H, status=RunStatus.COMPLETED)
    # when c is held during B's go-live walk (B records c as out; A leaves c uncompared since NOW)
    with row_held(Customer, c.pk):
        segment_entries_refresh(now=NOW + H)
    assert members(b) == set() and SegmentRecheck.objects.filter(customer=c).values_list("since", flat=True).get() == NOW
    # and c comes into B with no event
    Customer.objects.filter(pk=c.pk).update(traits={"plan": "free", "vip": True})
    segment_entries_refresh(now=NOW + 2 * H)
    # then c joined B after B recorded them out, with no entry since: they enter
    assert members(b) == {c.pk}
    assert JourneyRun.objects.filter(customer=c, version=b).count() == 2


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_python_walk_after_a_failed_sql_refresh_resets_when_customers_were_last_compared():
    # given a trigger, walked; the event path enters c, then an import takes them out again
    version = publish("profile.plan == 'gold'")
    c = Customer.objects.create(external_id="c", traits={"plan": "free"})
    segment_entries_refresh(now=NOW)
    enroll_candidates(version=load_version(version.pk),
                      candidates=[Candidate(customer_id=c.pk, trigger_key="profile:1")], now=NOW + 0.5 * H)
    JourneyRun.objects.update(created_at=NOW + 0.5 * H, status=RunStatus.COMPLETED)
    Customer.objects.filter(pk=c.pk).update(traits={"plan": "gold"})
    Customer.objects.filter(pk=c.pk).update(traits={"plan": "free"})
    # and c is held at the next refresh (left uncompared since NOW), then the SQL refresh fails
    # once and every trigger is walked in Python (which compares c: out)
    with row_held(Customer, c.pk):
        segment_entries_refresh(now=NOW + H)
    failed = []

    def sql_fails_once(execute, sql, params, many, context):
        if "AS states" in sql and not failed:
            failed.append(sql)
            raise DatabaseError("a translation bug")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(sql_fails_once):
        segment_entries_refresh(now=NOW + 2 * H)
    assert failed and members(version) == set()
    # when c comes in with no event, and the SQL refresh works again
    Customer.objects.filter(pk=c.pk).update(traits={"plan": "gold"})
    segment_entries_refresh(now=NOW + 3 * H)
    # then c (compared out at NOW+2h, no entry since) enters
    assert members(version) == {c.pk}
    assert JourneyRun.objects.filter(customer=c).count() == 2
