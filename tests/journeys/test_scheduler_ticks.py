"""The minute tick: never overlaps itself, claims each cron moment once and resumes a broadcast
where it stopped, and keeps every re-entry limit when ticks and workers run at the same time
(PostgreSQL: real threads, real commits)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection, transaction
from django.utils import timezone as djtz

from journeys.engine import scheduler
from journeys.engine.enrolment import Candidate, enroll_candidates
from journeys.engine.compiled import load_version
from journeys.engine.lease import Lease
from journeys.engine.scheduler import TICK_LEASE, date_triggers_run, engine_tick, runs_wake_due, schedules_run
from journeys.models import BusinessUnit, Customer, JourneyRun, SchedulerLease, StepExecution, TriggerState
from journeys.services.workflows import version_build, version_publish, workflow_create

UTC = timezone.utc
GOAL = [{"key": "done", "kind": "goal", "config": {}}]
on_postgres = pytest.mark.skipif(connection.vendor != "postgresql",
                                 reason="concurrency needs PostgreSQL's row locks; set DATABASE_URL to run")


def publish(definition: dict, name: str = "tick"):
    unit, _ = BusinessUnit.objects.get_or_create(slug="tick", defaults={"name": "Tick"})
    workflow = workflow_create(name=name, business_unit=unit)
    return version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")


def cron(expr: str, segment: str = "", **extra) -> dict:
    return {"trigger_kind": "schedule", "trigger_config": {"cron": expr, "segment": segment}, "reentry_policy": "always",
            "steps": GOAL, **extra}


def people(n: int, **traits) -> list[Customer]:
    start = Customer.objects.count()
    return Customer.objects.bulk_create(Customer(external_id=f"t{start + i}", traits=dict(traits)) for i in range(n))


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def keys() -> list[str]:
    return sorted(set(JourneyRun.objects.values_list("trigger_key", flat=True)))


# --------------------------------------------------------------------------- the lease


@pytest.mark.django_db
def test_a_tick_that_finds_the_lease_held_does_nothing():
    publish(cron("* * * * *"))
    people(2)
    other = Lease(TICK_LEASE, ttl=timedelta(minutes=5))
    assert other.acquire()

    result = engine_tick(now=at(2025, 1, 6, 9, 1))
    assert result["skipped"] == "another tick holds the lease" and result["schedule"] == 0
    assert not JourneyRun.objects.exists()

    other.release()
    assert engine_tick(now=at(2025, 1, 6, 9, 1))["schedule"] == 2


@pytest.mark.django_db
def test_a_lease_whose_holder_died_expires():
    SchedulerLease.objects.create(name=TICK_LEASE, holder="dead-host:1:x", expires_at=djtz.now() - timedelta(seconds=1))
    result = engine_tick(now=at(2025, 1, 6, 9, 1))
    assert "skipped" not in result
    assert SchedulerLease.objects.get(name=TICK_LEASE).expires_at <= djtz.now()  # released at the end


@pytest.mark.django_db
def test_a_tick_that_fails_releases_its_lease(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(scheduler, "date_triggers_run", broken)
    assert engine_tick(now=at(2025, 1, 6, 9, 1))["failed"] == ["date"]  # the other parts ran
    monkeypatch.setattr(scheduler.Lease, "renew", broken)  # what no part catches
    with pytest.raises(RuntimeError):
        engine_tick(now=at(2025, 1, 6, 9, 2))
    monkeypatch.undo()
    assert "skipped" not in engine_tick(now=at(2025, 1, 6, 9, 3))


# --------------------------------------------------------------------------- cron moments


@pytest.mark.django_db
def test_missed_cron_moments_are_caught_up_once_for_the_latest():
    version = publish(cron("*/5 * * * *"))
    people(3)
    TriggerState.objects.create(version=version, last_tick_at=at(2025, 1, 6, 8, 50))

    assert schedules_run(now=at(2025, 1, 6, 9, 7)) == 3
    assert keys() == ["schedule:2025-01-06T09:05:00+00:00"]
    assert schedules_run(now=at(2025, 1, 6, 9, 8)) == 0
    assert schedules_run(now=at(2025, 1, 6, 9, 10)) == 3


@pytest.mark.django_db
@pytest.mark.parametrize("expr, fires_on", [
    # both day fields given: either one (the 1st, the 15th, and every Monday), as cron reads them
    ("0 9 1,15 * 1", {(2026, 12, 1), (2026, 12, 7), (2026, 12, 14), (2026, 12, 15), (2026, 12, 21)}),
    ("0 9 15 * *", {(2026, 12, 15)}),  # a * leaves the other field alone to decide
    ("0 9 * * 1", {(2026, 12, 7), (2026, 12, 14), (2026, 12, 21)}),
    ("0 9 */10 * 1", {(2026, 12, 21)}),  # */10 starts with *: days 1, 11, 21 that are Mondays (as Vixie cron)
])
def test_cron_day_fields_are_read_as_cron_reads_them(expr, fires_on):
    version = publish(cron(expr))
    people(1)
    fired = set()
    for day in range(1, 22):
        TriggerState.objects.update_or_create(version=version, defaults={"last_tick_at": at(2026, 12, day, 8, 59)})
        if schedules_run(now=at(2026, 12, day, 9, 0)):
            fired.add((2026, 12, day))
    assert fired == fires_on


@pytest.mark.django_db
def test_a_tick_never_enrols_an_erased_profile():
    version = publish(cron("* * * * *"))
    alive, gone = people(2)
    Customer.objects.filter(pk=gone.pk).update(erased_at=djtz.now())

    result = enroll_candidates(version=load_version(version.pk), now=djtz.now(),
                               candidates=[Candidate(c.pk, "schedule:x") for c in (alive, gone)])

    assert (result.enrolled, result.skipped) == (1, 1)
    assert list(JourneyRun.objects.values_list("customer_id", flat=True)) == [alive.pk]


@pytest.mark.django_db
def test_a_broadcast_cut_short_resumes_after_its_last_committed_page(monkeypatch):
    version = publish(cron("0 9 * * *", "profile.plan == 'pro'"))
    pros = people(7, plan="pro")
    people(3, plan="free")
    TriggerState.objects.create(version=version, last_tick_at=at(2025, 1, 6, 8, 59))
    monkeypatch.setattr(scheduler, "AUDIENCE_PAGE", 3)
    calls = {"n": 0}
    real = scheduler.enroll_candidates

    def dies_on_the_second_page(**kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker killed")
        return real(**kwargs)

    monkeypatch.setattr(scheduler, "enroll_candidates", dies_on_the_second_page)
    with pytest.raises(RuntimeError):
        schedules_run(now=at(2025, 1, 6, 9, 0))
    state = TriggerState.objects.get(version=version)
    assert state.broadcast_at == at(2025, 1, 6, 9, 0) and state.broadcast_after_id == pros[2].pk
    assert JourneyRun.objects.count() == 3

    monkeypatch.setattr(scheduler, "enroll_candidates", real)
    assert schedules_run(now=at(2025, 1, 6, 9, 3)) == 4  # the rest of the 09:00 broadcast, same trigger key
    assert keys() == ["schedule:2025-01-06T09:00:00+00:00"]
    assert sorted(JourneyRun.objects.values_list("customer_id", flat=True)) == [p.pk for p in pros]
    assert TriggerState.objects.get(version=version).broadcast_at is None


@pytest.mark.django_db
def test_a_cron_broadcast_honours_re_entry_once_across_moments():
    publish(cron("* * * * *", reentry_policy="once"))
    people(4)
    schedules_run(now=at(2025, 1, 6, 9, 0))
    assert schedules_run(now=at(2025, 1, 6, 9, 1)) == 0
    newcomer = people(1)[0]
    assert schedules_run(now=at(2025, 1, 6, 9, 2)) == 1
    assert JourneyRun.objects.filter(customer=newcomer).get().trigger_key == "schedule:2025-01-06T09:02:00+00:00"


# --------------------------------------------------------------------------- concurrency (PostgreSQL)


def _threads(*targets) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(target):
        def run():
            try:
                target()
            except BaseException as exc:  # pragma: no cover - reported by the test
                errors.append(exc)
            finally:
                connection.close()
        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


@on_postgres
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("policy", ["once", "cooldown"])
def test_two_overlapping_enrolments_under_different_keys_enrol_each_customer_once(policy):
    """The bug report: two ticks enrolled the same people under different trigger keys (12,650 runs
    for 10,000 customers). Runs that end at once leave no open run to collide with, and the second
    enrolment reads the history before the first commits: only the database can refuse it."""
    version = publish(cron("* * * * *", reentry_policy=policy, reentry_cooldown_s=86400, allow_concurrent_runs=True))
    crowd = people(300)
    compiled = load_version(version.pk)
    first_inserted = threading.Event()

    def first():
        with transaction.atomic():
            enroll_candidates(version=compiled, candidates=[Candidate(c.pk, "schedule:09:01") for c in crowd], now=djtz.now())
            first_inserted.set()
            time.sleep(1.0)  # still uncommitted while the second one enrols

    def second():
        first_inserted.wait(30)
        with transaction.atomic():
            enroll_candidates(version=compiled, candidates=[Candidate(c.pk, "schedule:09:02") for c in crowd], now=djtz.now())

    assert _threads(first, second) == []
    assert JourneyRun.objects.count() == 300
    assert keys() == ["schedule:09:01"]


@on_postgres
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_cron_ticks_broadcast_to_each_customer_once():
    version = publish(cron("* * * * *", "profile.plan == 'pro'", reentry_policy="once"))
    people(500, plan="pro")
    people(50, plan="free")
    TriggerState.objects.create(version=version, last_tick_at=at(2025, 1, 6, 9, 0))
    barrier = threading.Barrier(3)

    def tick(minute):
        def run():
            barrier.wait()
            schedules_run(now=at(2025, 1, 6, 9, minute))
        return run

    assert _threads(tick(1), tick(2), tick(3)) == []
    assert JourneyRun.objects.count() == 500
    assert JourneyRun.objects.values("customer").distinct().count() == 500


@on_postgres
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_wake_ups_take_each_due_run_once():
    from journeys.engine.enrolment import runs_enroll_bulk

    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "reentry_policy": "always",
                       "steps": [{"key": "wait", "kind": "delay", "config": {"duration": "1h"}},
                                 {"key": "done", "kind": "goal", "config": {}}],
                       "edges": [{"from": "wait", "outcome": "next", "to": "done"}]})
    runs_enroll_bulk(version=version, customer_ids=[c.pk for c in people(2500)], trigger_key="api:1",
                     now=at(2025, 1, 6, 12))
    barrier = threading.Barrier(3)
    counts: list[int] = []

    def waker():
        barrier.wait()
        counts.append(runs_wake_due(now=at(2025, 1, 6, 13)))

    assert _threads(waker, waker, waker) == []
    assert sum(counts) == 2500
    assert StepExecution.objects.filter(step_key="done").count() == 2500
    assert set(JourneyRun.objects.values_list("status", flat=True)) == {"completed"}


@on_postgres
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_date_ticks_enrol_each_customer_once():
    version = publish({"trigger_kind": "date_attribute", "trigger_config": {"attribute": "birthday", "at": "09:00"},
                       "reentry_policy": "always", "steps": GOAL})
    Customer.objects.bulk_create(Customer(external_id=f"d{i}", traits={"birthday": "1990-06-15"}) for i in range(1500))
    date_triggers_run(now=at(2025, 6, 1))  # prepare
    barrier = threading.Barrier(3)

    def tick():
        barrier.wait()
        date_triggers_run(now=at(2025, 6, 15, 9, 5))

    assert _threads(tick, tick, tick) == []
    assert JourneyRun.objects.filter(version=version).count() == 1500
    assert JourneyRun.objects.values("customer").distinct().count() == 1500


@on_postgres
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_ticks_at_once_one_works_the_other_returns():
    publish(cron("* * * * *"))
    people(200)
    barrier = threading.Barrier(2)
    results: list[dict] = []

    def tick():
        barrier.wait()
        results.append(engine_tick(now=at(2025, 1, 6, 9, 1)))

    assert _threads(tick, tick) == []
    skipped = [r for r in results if "skipped" in r]
    worked = [r for r in results if "skipped" not in r]
    assert len(skipped) == 1 and len(worked) == 1 and worked[0]["schedule"] == 200
    assert JourneyRun.objects.count() == 200
