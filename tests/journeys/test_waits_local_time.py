"""Waits in days keep the customer's local time across DST changes (a day later is the same wall
clock the next day, in the customer's zone); hours stay elapsed time; a run waiting until a local
time follows the customer's current zone. Driven through the tick's parts with a simulated clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from journeys.engine.scheduler import date_triggers_run, runs_wake_due
from journeys.models import BusinessUnit, Customer, JourneyRun
from journeys.services.workflows import version_build, version_publish, workflow_create

pytestmark = pytest.mark.django_db
UTC = timezone.utc


def publish(first: dict, *, at: str = "09:00"):
    """Birthday at `at` local -> `first` step -> goal."""
    unit, _ = BusinessUnit.objects.get_or_create(slug="waits", defaults={"name": "Waits"})
    workflow = workflow_create(name="waits", business_unit=unit)
    definition = {"trigger_kind": "date_attribute", "trigger_config": {"attribute": "birthday", "at": at},
                  "reentry_policy": "always",
                  "steps": [{"key": "wait", **first}, {"key": "done", "kind": "goal", "config": {}}],
                  "edges": [{"from": "wait", "outcome": o, "to": "done"} for o in ("next", "timeout")
                            if o == ("next" if first["kind"] == "delay" else "timeout")]}
    return version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")


def wakes_local(zone: str) -> str:
    run = JourneyRun.objects.get(customer__external_id=zone)
    assert run.status == "waiting", run.error
    return run.next_wake_at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


@pytest.mark.parametrize(("zone", "birthday", "entry", "expected"), [
    ("Australia/Sydney", "1990-10-02", datetime(2027, 10, 1, 23, 0, tzinfo=UTC), "2027-10-03 09:00"),  # spring fwd
    ("Australia/Lord_Howe", "1990-10-02", datetime(2027, 10, 1, 22, 30, tzinfo=UTC), "2027-10-03 09:00"),  # 30 min
    ("America/New_York", "1990-11-06", datetime(2027, 11, 6, 13, 0, tzinfo=UTC), "2027-11-07 09:00"),  # fall back
    ("UTC", "1990-11-06", datetime(2027, 11, 6, 9, 0, tzinfo=UTC), "2027-11-07 09:00"),
])
def test_a_one_day_delay_keeps_the_local_time_across_a_dst_change(zone, birthday, entry, expected):
    publish({"kind": "delay", "config": {"duration": "1d"}})
    Customer.objects.create(external_id=zone, timezone=zone, traits={"birthday": birthday})

    assert date_triggers_run(now=entry) == 1

    assert wakes_local(zone) == expected


def test_a_week_wait_for_event_timeout_keeps_the_local_time():
    publish({"kind": "wait_for_event", "config": {"event": "Order Completed", "timeout": "1w"}})
    Customer.objects.create(external_id="America/New_York", timezone="America/New_York",
                            traits={"birthday": "1990-11-02"})

    date_triggers_run(now=datetime(2027, 11, 2, 13, 0, tzinfo=UTC))  # 09:00 EDT

    assert wakes_local("America/New_York") == "2027-11-09 09:00"  # EST by then


def test_hours_stay_elapsed_time():
    publish({"kind": "delay", "config": {"duration": "12h"}}, at="20:00")
    Customer.objects.create(external_id="Australia/Sydney", timezone="Australia/Sydney",
                            traits={"birthday": "1990-10-02"})

    date_triggers_run(now=datetime(2027, 10, 2, 10, 0, tzinfo=UTC))  # 20:00 AEST, clocks go forward at 02:00

    run = JourneyRun.objects.get()
    assert run.next_wake_at == datetime(2027, 10, 2, 22, 0, tzinfo=UTC)  # 12 elapsed hours: 09:00 AEDT
    assert runs_wake_due(now=run.next_wake_at + timedelta(minutes=1)) == 1
    assert JourneyRun.objects.get().status == "completed"


@pytest.mark.parametrize(("duration", "expected"), [
    ("24h", "2027-11-07 09:00"),  # 1d: the same wall time, 25 elapsed hours across fall-back
    ("36h", "2027-11-07 21:00"),  # one calendar day, then 12 elapsed hours
    ("48h", "2027-11-08 09:00"),  # two calendar days: 49 elapsed hours
])
def test_a_wait_of_24_hours_or_more_counts_its_whole_days_on_the_calendar(duration, expected):
    # given a New York customer entering at 09:00 EDT the day before clocks go back
    publish({"kind": "delay", "config": {"duration": duration}})
    Customer.objects.create(external_id="America/New_York", timezone="America/New_York",
                            traits={"birthday": "1990-11-06"})
    # when the delay starts
    date_triggers_run(now=datetime(2027, 11, 6, 13, 0, tzinfo=UTC))
    # then every whole 24 hours is a calendar day (durations are stored in seconds, not units), as README says
    assert wakes_local("America/New_York") == expected


def test_a_wait_until_a_local_time_follows_a_later_change_of_zone(api):
    publish({"kind": "delay", "config": {"until_local_time": "09:00"}}, at="20:00")
    for name in ("moves", "stays"):
        api.post("identify", {"userId": name, "traits": {"timezone": "Australia/Lord_Howe", "birthday": "1990-12-06"}})
    date_triggers_run(now=datetime(2026, 12, 6, 9, 0, tzinfo=UTC))  # 20:00 on Lord Howe (+11)
    assert set(JourneyRun.objects.values_list("next_wake_at", flat=True)) == {
        datetime(2026, 12, 6, 22, 0, tzinfo=UTC)}  # 09:00 on Lord Howe

    # when the customer's zone changes before the wait ends
    assert api.post("identify", {"userId": "moves", "traits": {"timezone": "Asia/Tokyo"}}).status_code == 200
    runs_wake_due(now=datetime(2026, 12, 6, 22, 1, tzinfo=UTC))

    # then the one who stayed wakes as planned, the one who moved at 09:00 Tokyo time
    moved, stayed = (JourneyRun.objects.get(customer__external_id=n) for n in ("moves", "stays"))
    assert stayed.status == "completed"
    assert (moved.status, moved.next_wake_at) == ("waiting", datetime(2026, 12, 7, 0, 0, tzinfo=UTC))
    assert runs_wake_due(now=datetime(2026, 12, 6, 23, 59, tzinfo=UTC)) == 0
    assert runs_wake_due(now=datetime(2026, 12, 7, 0, 0, tzinfo=UTC)) == 1
    moved.refresh_from_db()
    assert moved.status == "completed"
    assert list(moved.executions.values_list("step_key", "visit")) == [("wait", 1), ("done", 1)]  # slept once more, no second visit
