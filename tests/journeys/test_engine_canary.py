"""Canary routing of time-based entries: date, inactivity and cron triggers take the same
deterministic share (canary_bucket) as event triggers; runs in flight stay on their version."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from django.utils import timezone as djtz

from journeys.engine.compiled import canary_bucket
from journeys.engine.processor import events_process
from journeys.engine.scheduler import date_triggers_run, runs_wake_due, schedules_run, watches_fire_due
from journeys.models import BusinessUnit, Customer, Event, JourneyRun, TriggerWatch
from journeys.services.workflows import (
    version_build,
    version_canary_start,
    version_new_draft,
    version_publish,
    workflow_create,
)
from tests.factories import make_source

pytestmark = pytest.mark.django_db

PEOPLE = 1000
PERCENT = 20


def live_with_canary(definition: dict, percent: int = PERCENT):
    """A workflow live on v1 with v2 (a copy) as its canary; returns (workflow, v1, v2)."""
    unit, _ = BusinessUnit.objects.get_or_create(slug="canary", defaults={"name": "Canary"})
    workflow = workflow_create(name=f"canary {definition['trigger_kind']}", business_unit=unit)
    v1 = version_publish(version=version_build(workflow=workflow, definition=definition), reason="v1")
    v2 = version_canary_start(version=version_new_draft(version=v1), percent=percent, reason="try v2")
    return workflow, v1, v2


def assert_share(workflow, v1, v2, people: list[Customer]) -> None:
    """Every customer entered exactly once, on the side their bucket says; the canary's share
    is within 4 standard deviations of a binomial(n, percent)."""
    runs = dict(JourneyRun.objects.filter(workflow=workflow).values_list("customer_id", "version_id"))
    assert len(runs) == len(people) == JourneyRun.objects.filter(workflow=workflow).count()
    for person in people:
        expected = v2.pk if canary_bucket(workflow.pk, person.pk) < PERCENT * 100 else v1.pk
        assert runs[person.pk] == expected
    on_canary = sum(1 for v in runs.values() if v == v2.pk)
    n, p = len(people), PERCENT / 100
    assert abs(on_canary - n * p) <= 4 * math.sqrt(n * p * (1 - p)), on_canary


def people_with(traits: dict, count: int = PEOPLE) -> list[Customer]:
    return Customer.objects.bulk_create(
        Customer(external_id=f"c{i}", timezone="UTC", traits=dict(traits)) for i in range(count)
    )


DATE = {"trigger_kind": "date_attribute", "trigger_config": {"attribute": "signup_date", "at": "09:00"},
        "reentry_policy": "always",
        "steps": [{"key": "wait", "kind": "delay", "config": {"duration": "1d"}},
                  {"key": "done", "kind": "goal", "config": {}}],
        "edges": [{"from": "wait", "outcome": "next", "to": "done"}]}


def test_date_trigger_entries_follow_the_canary_share():
    workflow, v1, v2 = live_with_canary(DATE)
    people = people_with({"signup_date": "2020-06-15"})

    assert date_triggers_run(now=datetime(2025, 6, 15, 10, 0, tzinfo=timezone.utc)) == PEOPLE

    assert_share(workflow, v1, v2, people)
    assert date_triggers_run(now=datetime(2025, 6, 15, 11, 0, tzinfo=timezone.utc)) == 0  # once per day


def test_date_runs_in_flight_stay_on_their_version_when_the_canary_is_promoted():
    workflow, v1, v2 = live_with_canary(DATE)
    people_with({"signup_date": "2020-06-15"}, count=200)
    date_triggers_run(now=datetime(2025, 6, 15, 10, 0, tzinfo=timezone.utc))
    before = dict(JourneyRun.objects.values_list("pk", "version_id"))
    assert set(before.values()) == {v1.pk, v2.pk}

    version_publish(version=v2, reason="canary healthy")  # v1 retires; its runs are waiting in the delay
    runs_wake_due(now=datetime(2025, 6, 17, tzinfo=timezone.utc))

    after = dict(JourneyRun.objects.values_list("pk", "version_id"))
    assert after == before
    assert set(JourneyRun.objects.values_list("status", flat=True)) == {"completed"}


INACTIVE = {"trigger_kind": "inactivity", "trigger_event": "Checkout Started",
            "trigger_config": {"followed_by": "Order Completed", "within": "1h"}, "reentry_policy": "always",
            "steps": [{"key": "done", "kind": "goal", "config": {}}]}


def checkouts(people: list[Customer], tag: str) -> list[int]:
    from journeys.models import Source

    source = Source.objects.filter(name="canary-web").first() or make_source("canary-web")[0]
    now = djtz.now()
    events = Event.objects.bulk_create(
        Event(source=source, message_id=f"{tag}-{p.pk}", type="track", name="Checkout Started", customer=p,
              user_id=p.external_id, timestamp=now, received_at=now) for p in people
    )
    ids = [e.pk for e in events]
    for i in range(0, len(ids), 200):  # as the ingest API enqueues them
        events_process(event_ids=ids[i : i + 200])
    return ids


def test_inactivity_trigger_entries_follow_the_canary_share():
    workflow, v1, v2 = live_with_canary(INACTIVE)
    people = people_with({})
    checkouts(people, "a")
    assert TriggerWatch.objects.count() == PEOPLE  # one window per customer, on their side only

    assert watches_fire_due(now=djtz.now() + timedelta(hours=2)) == PEOPLE

    assert_share(workflow, v1, v2, people)


def test_an_open_inactivity_window_stays_on_its_version_through_a_canary():
    unit = BusinessUnit.objects.create(slug="w", name="W")
    workflow = workflow_create(name="cart", business_unit=unit)
    v1 = version_publish(version=version_build(workflow=workflow, definition=INACTIVE), reason="v1")
    people = people_with({}, count=50)
    checkouts(people, "before")  # windows open on v1 (no canary yet)
    v2 = version_canary_start(version=version_new_draft(version=v1), percent=99, reason="almost all")

    watches_fire_due(now=djtz.now() + timedelta(hours=2))

    assert set(JourneyRun.objects.values_list("version_id", flat=True)) == {v1.pk}
    assert JourneyRun.objects.count() == 50
    checkouts(people, "after")  # new windows are routed: 99% to the canary
    watches_fire_due(now=djtz.now() + timedelta(hours=4))
    moved = JourneyRun.objects.filter(version=v2).count()
    assert moved == sum(canary_bucket(workflow.pk, p.pk) < 9900 for p in people) and moved >= 45


def test_cron_schedule_entries_follow_the_canary_share():
    definition = {"trigger_kind": "schedule", "trigger_config": {"cron": "0 9 * * *", "segment": "profile.plan == 'pro'"},
                  "reentry_policy": "always", "steps": [{"key": "done", "kind": "goal", "config": {}}]}
    workflow, v1, v2 = live_with_canary(definition)
    people = people_with({"plan": "pro"})

    schedules_run(now=datetime(2025, 6, 15, 8, 59, tzinfo=timezone.utc))
    assert schedules_run(now=datetime(2025, 6, 15, 9, 0, tzinfo=timezone.utc)) == PEOPLE

    assert_share(workflow, v1, v2, people)
