"""Bulk enrolment (`runs_enroll_bulk`) and the time-driven entries built on it: a whole audience
enters set-based, with entry rules, re-entry limits, one open run, the canary share, business
hours and per-customer run variables; due runs start and resume one task per page."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection
from django.utils import timezone as djtz
from django.test.utils import CaptureQueriesContext
from django_q.models import Task

from channels_app.models import Delivery
from journeys.engine.compiled import canary_bucket, reset_caches
from journeys.engine.enrolment import VersionNotLive, runs_enroll_bulk
from journeys.engine.scheduler import runs_wake_due, schedules_run
from journeys.models import BusinessUnit, Customer, EntryGate, JourneyRun, StepExecution, TriggerState
from journeys.services.workflows import (
    version_build,
    version_canary_start,
    version_new_draft,
    version_publish,
    workflow_create,
    workflow_export,
    workflow_import,
)
from tests.channels_app.factories import ChannelFactory, TemplateFactory
from tests.journeys.test_governance_fixtures import live_workflow, people, units  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db
UTC = timezone.utc
GOAL = [{"key": "done", "kind": "goal", "config": {}}]


def publish(definition: dict, name: str = "bulk"):
    unit, _ = BusinessUnit.objects.get_or_create(slug="bulk", defaults={"name": "Bulk"})
    workflow = workflow_create(name=name, business_unit=unit)
    return version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")


def make_customers(n: int, *, zone: str = "UTC", **traits) -> list[Customer]:
    start = Customer.objects.count()
    return Customer.objects.bulk_create(
        Customer(external_id=f"p{start + i}", email=f"p{start + i}@example.com", timezone=zone, traits=dict(traits))
        for i in range(n))


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ids(customers) -> list[int]:
    return [c.pk for c in customers]


# --------------------------------------------------------------------------- runs_enroll_bulk


def test_a_list_of_customers_enters_with_their_own_data_in_rules_and_messages():
    ChannelFactory(name="mail", kind="email", provider="console")
    TemplateFactory(name="offer", subject="For you", body="Your code is {{ journey.coupon }}.")
    version = publish({
        "trigger_kind": "event", "trigger_event": "Never Sent", "reentry_policy": "always",
        "steps": [{"key": "has_code", "kind": "condition", "config": {"rule": "journey.coupon != null"}},
                  {"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "offer"}}],
        "edges": [{"from": "has_code", "outcome": "yes", "to": "send"}]})
    crowd = make_customers(3)
    coupons = {crowd[0].pk: {"coupon": "AAA"}, crowd[1].pk: {"coupon": "BBB"}}

    result = runs_enroll_bulk(version=version, customer_ids=ids(crowd), trigger_key="api:1", now=at(2025, 1, 6, 12),
                              variables=coupons)

    assert (result.enrolled, result.waiting, result.skipped) == (3, 0, 0)
    bodies = dict(Delivery.objects.values_list("customer_id", "body"))
    assert bodies == {crowd[0].pk: "Your code is AAA.", crowd[1].pk: "Your code is BBB."}
    assert dict(JourneyRun.objects.values_list("customer_id", "variables"))[crowd[0].pk] == {"coupon": "AAA"}
    assert set(JourneyRun.objects.values_list("status", flat=True)) == {"completed"}


def test_the_same_trigger_key_again_does_nothing_and_entry_rules_apply():
    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "reentry_policy": "always",
                       "entry_rule": "profile.plan == 'pro'", "steps": GOAL})
    pros, free = make_customers(4, plan="pro"), make_customers(2, plan="free")
    merged = make_customers(1, plan="pro")[0]
    Customer.objects.filter(pk=merged.pk).update(merged_into=pros[0])

    first = runs_enroll_bulk(version=version, customer_ids=ids(pros + free) + [merged.pk], trigger_key="api:7",
                             now=at(2025, 1, 6, 12))
    again = runs_enroll_bulk(version=version, customer_ids=ids(pros + free), trigger_key="api:7", now=at(2025, 1, 6, 12))

    assert (first.enrolled, first.skipped) == (4, 3)
    assert (again.enrolled, again.skipped) == (0, 6)
    assert set(JourneyRun.objects.values_list("customer_id", flat=True)) == set(ids(pros))


def test_re_entry_once_holds_across_trigger_keys():
    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "reentry_policy": "once", "steps": GOAL})
    crowd = make_customers(5)
    runs_enroll_bulk(version=version, customer_ids=ids(crowd[:3]), trigger_key="api:a", now=at(2025, 1, 6))

    second = runs_enroll_bulk(version=version, customer_ids=ids(crowd), trigger_key="api:b", now=at(2025, 1, 7))

    assert second.enrolled == 2
    assert JourneyRun.objects.count() == 5
    assert EntryGate.objects.count() == 5


def test_cooldown_is_counted_from_the_last_entry():
    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "reentry_policy": "cooldown",
                       "reentry_cooldown_s": 3600, "steps": GOAL})
    crowd = make_customers(2)
    start = djtz.now()
    runs_enroll_bulk(version=version, customer_ids=ids(crowd), trigger_key="api:1", now=start)

    later = start + timedelta(minutes=59)
    assert runs_enroll_bulk(version=version, customer_ids=ids(crowd), trigger_key="api:2", now=later).enrolled == 0
    later = start + timedelta(minutes=61)
    assert runs_enroll_bulk(version=version, customer_ids=ids(crowd), trigger_key="api:3", now=later).enrolled == 2


def test_one_open_run_per_customer_holds_in_bulk():
    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "reentry_policy": "always",
                       "steps": [{"key": "wait", "kind": "delay", "config": {"duration": "1d"}}]})
    crowd = make_customers(3)
    runs_enroll_bulk(version=version, customer_ids=ids(crowd[:2]), trigger_key="api:1", now=at(2025, 1, 6))

    assert runs_enroll_bulk(version=version, customer_ids=ids(crowd), trigger_key="api:2", now=at(2025, 1, 6)).enrolled == 1


def test_the_canary_share_routes_each_customer_to_one_side():
    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "reentry_policy": "always", "steps": GOAL})
    canary = version_canary_start(version=version_new_draft(version=version), percent=30, reason="try")
    crowd = make_customers(400)

    result = runs_enroll_bulk(version=version, customer_ids=ids(crowd), trigger_key="api:1", now=at(2025, 1, 6))

    assert result.enrolled == 400
    sides = dict(JourneyRun.objects.values_list("customer_id", "version_id"))
    for c in crowd:
        assert sides[c.pk] == (canary.pk if canary_bucket(version.workflow_id, c.pk) < 3000 else version.pk)
    on_canary = sum(v == canary.pk for v in sides.values())
    assert abs(on_canary - 120) <= 4 * math.sqrt(400 * 0.3 * 0.7)


def test_a_version_that_is_not_live_takes_no_bulk_entries():
    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "steps": GOAL})
    draft = version_new_draft(version=version)
    with pytest.raises(VersionNotLive):
        runs_enroll_bulk(version=draft, customer_ids=ids(make_customers(1)), trigger_key="api:1", now=at(2025, 1, 6))


def test_one_task_per_page_of_runs_and_a_few_statements_per_page():
    """2,500 customers: three start tasks (1,000 runs each at most), never one per customer."""
    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "reentry_policy": "once", "steps": GOAL})
    crowd = make_customers(2500)
    Task.objects.all().delete()

    with CaptureQueriesContext(connection) as queries:
        result = runs_enroll_bulk(version=version, customer_ids=ids(crowd), trigger_key="api:1", now=at(2025, 1, 6))

    assert result.enrolled == 2500
    assert Task.objects.filter(func="journeys.tasks.runs_wake").count() == 3
    assert JourneyRun.objects.filter(status="completed").count() == 2500
    assert len(queries) < 120, len(queries)  # includes the three tasks' own statements


# --------------------------------------------------------------------------- business hours


def test_entries_outside_business_hours_wait_for_the_customers_window():
    hours = {"days": [0, 1, 2, 3, 4], "start": "09:00", "end": "17:00"}
    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "reentry_policy": "always",
                       "business_hours": hours, "steps": GOAL})
    tokyo, ny = make_customers(1, zone="Asia/Tokyo")[0], make_customers(1, zone="America/New_York")[0]

    # Saturday 2025-01-11 12:00 UTC: the weekend everywhere.
    result = runs_enroll_bulk(version=version, customer_ids=[tokyo.pk, ny.pk], trigger_key="api:1", now=at(2025, 1, 11, 12))

    assert (result.enrolled, result.waiting) == (2, 2)
    runs = {r.customer_id: r for r in JourneyRun.objects.all()}
    assert runs[tokyo.pk].next_wake_at == at(2025, 1, 13, 0)  # Monday 09:00 in Tokyo
    assert runs[ny.pk].next_wake_at == at(2025, 1, 13, 14)  # Monday 09:00 in New York
    assert {r.status for r in runs.values()} == {"waiting"} and not StepExecution.objects.exists()

    assert runs_wake_due(now=at(2025, 1, 13, 0, 0)) == 1
    assert JourneyRun.objects.get(customer=tokyo).status == "completed"
    assert JourneyRun.objects.get(customer=ny).status == "waiting"
    assert runs_wake_due(now=at(2025, 1, 13, 14, 0)) == 1
    assert set(JourneyRun.objects.values_list("status", flat=True)) == {"completed"}


def test_a_cron_broadcast_inside_the_window_starts_at_once():
    version = publish({"trigger_kind": "schedule", "trigger_config": {"cron": "0 10 * * *", "segment": ""},
                       "reentry_policy": "always", "business_hours": {"days": [0, 1, 2, 3, 4], "start": "09:00",
                                                                      "end": "17:00"}, "steps": GOAL})
    make_customers(3)
    TriggerState.objects.create(version=version, last_tick_at=at(2025, 1, 6, 9, 59))

    assert schedules_run(now=at(2025, 1, 6, 10, 0)) == 3  # a Monday
    assert set(JourneyRun.objects.values_list("status", flat=True)) == {"completed"}


def test_business_hours_travel_with_the_exported_version_and_bad_ones_are_refused():
    from django.core.exceptions import ValidationError

    hours = {"days": [5, 6], "start": "10:00", "end": "12:30"}
    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "business_hours": hours, "steps": GOAL})
    exported = workflow_export(version=version)
    assert exported["version"]["business_hours"] == hours

    copy = workflow_import(data=exported, name="bulk copy")
    assert copy.business_hours == hours
    assert workflow_export(version=copy)["version"] == exported["version"]

    for bad in ({"days": [7], "start": "09:00", "end": "17:00"}, {"days": [1], "start": "18:00", "end": "09:00"},
                {"days": [1], "start": "9am", "end": "17:00"}, "weekdays"):
        with pytest.raises(ValidationError) as error:
            workflow_import(data={**exported, "version": {**exported["version"], "business_hours": bad}}, name="bad")
        assert "business_hours" in error.value.message_dict


def test_versions_without_business_hours_export_as_before():
    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "steps": GOAL})
    assert "business_hours" not in workflow_export(version=version)["version"]


# --------------------------------------------------------------------------- waits and delays, set-based


def test_thousands_of_delays_ending_together_resume_in_pages():
    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "reentry_policy": "always",
                       "steps": [{"key": "wait", "kind": "delay", "config": {"duration": "1h"}},
                                 {"key": "done", "kind": "goal", "config": {}}],
                       "edges": [{"from": "wait", "outcome": "next", "to": "done"}]})
    crowd = make_customers(2100)
    runs_enroll_bulk(version=version, customer_ids=ids(crowd), trigger_key="api:1", now=at(2025, 1, 6, 12))
    assert JourneyRun.objects.filter(status="waiting", current_step="wait").count() == 2100
    Task.objects.all().delete()
    reset_caches()

    with CaptureQueriesContext(connection) as queries:
        assert runs_wake_due(now=at(2025, 1, 6, 13)) == 2100

    assert JourneyRun.objects.filter(status="completed").count() == 2100
    assert StepExecution.objects.filter(step_key="wait", outcome="next").count() == 2100
    assert Task.objects.filter(func="journeys.tasks.runs_wake").count() == 3
    assert len(queries) < 100, len(queries)
    assert runs_wake_due(now=at(2025, 1, 6, 14)) == 0  # nothing runs twice


def test_a_page_whose_lease_moved_on_is_not_woken_twice():
    from journeys.engine.wakeups import WAKE_LEASE, runs_wake

    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "reentry_policy": "always",
                       "steps": [{"key": "wait", "kind": "delay", "config": {"duration": "1h"}},
                                 {"key": "done", "kind": "goal", "config": {}}],
                       "edges": [{"from": "wait", "outcome": "next", "to": "done"}]})
    runs_enroll_bulk(version=version, customer_ids=ids(make_customers(2)), trigger_key="api:1", now=at(2025, 1, 6, 12))
    run_ids = list(JourneyRun.objects.values_list("pk", flat=True))
    runs_wake_due(now=at(2025, 1, 6, 13))  # claimed and woken with lease 13:00 + WAKE_LEASE

    # The same page handed out again (a duplicated task): nothing happens.
    assert runs_wake(run_ids=run_ids, lease=at(2025, 1, 6, 13) + WAKE_LEASE, now=at(2025, 1, 6, 13)) == 0
    assert StepExecution.objects.filter(step_key="done").count() == 2


def test_business_hours_are_typed_as_text_in_the_version_admin_with_errors_at_the_field(client, people, live_workflow):
    from django.urls import reverse

    from tests.journeys.test_governance_fixtures import admin_form_data, draft_of, login

    draft = draft_of(live_workflow)
    login(client, people["ops"])
    url = reverse("admin:journeys_workflowversion_change", args=[draft.pk])
    page = client.get(url)
    assert page.status_code == 200 and 'name="business_hours"' in page.content.decode()

    refused = client.post(url, admin_form_data(page, business_hours="Mon-Fry 09:00-17:00", change_reason="hours"))
    assert refused.status_code == 200
    assert "unknown day range 'mon-fry'" in " ".join(refused.context["adminform"].form.errors["business_hours"])
    refused = client.post(url, admin_form_data(page, business_hours="Mon-Fri 17:00-09:00", change_reason="hours"))
    assert "must be later than start" in " ".join(refused.context["adminform"].form.errors["business_hours"])

    saved = client.post(url, admin_form_data(page, business_hours="Sat-Mon 8:00-20:30", change_reason="hours"))
    assert saved.status_code == 302
    draft.refresh_from_db()
    assert draft.business_hours == {"days": [0, 5, 6], "start": "08:00", "end": "20:30"}
    assert 'value="Mon,Sat-Sun 08:00-20:30"' in client.get(url).content.decode()


@pytest.mark.parametrize("policy", ["always", "once", "cooldown"])
def test_entry_checks_decide_alike_over_a_long_history(policy):
    """A daily broadcast after a year: each customer has hundreds of finished runs of it. The
    entry checks read only the runs they decide on (this trigger, open runs, one run for `once`,
    those inside the cooldown) and decide as with every run in hand."""
    version = publish({"trigger_kind": "event", "trigger_event": "Never Sent", "reentry_policy": policy,
                       "reentry_cooldown_s": 3600, "steps": [{"key": "wait", "kind": "delay", "config": {"duration": "1d"}}]})
    crowd = make_customers(24)
    now = djtz.now()
    JourneyRun.objects.bulk_create(
        JourneyRun(workflow_id=version.workflow_id, version=version, customer=c, trigger_key=f"cron:{day}",
                   status="completed", current_step="done")
        for c in crowd[:16] for day in range(40))
    for day in range(40):  # created_at is set on insert
        JourneyRun.objects.filter(trigger_key=f"cron:{day}").update(created_at=now - timedelta(days=day + 1))
    recent, open_run, same_key = crowd[:4], crowd[4:8], crowd[8:12]  # 12-15: only old finished runs; 16-23: none
    JourneyRun.objects.filter(customer__in=recent, trigger_key="cron:0").update(created_at=now - timedelta(minutes=5))
    JourneyRun.objects.filter(customer__in=open_run, trigger_key="cron:1").update(status="waiting", exclusive=True)
    JourneyRun.objects.filter(customer__in=same_key, trigger_key="cron:2").update(trigger_key="cron:new")

    result = runs_enroll_bulk(version=version, customer_ids=ids(crowd), trigger_key="cron:new", now=now)

    entered = set(JourneyRun.objects.filter(trigger_key="cron:new", status="waiting").exclude(customer__in=same_key)
                  .values_list("customer_id", flat=True))
    expected = {
        "always": ids(recent) + ids(crowd[12:]),  # not the open runs, not the same trigger again
        "once": ids(crowd[16:]),  # only those who never entered
        "cooldown": ids(crowd[12:]),  # not within the hour, not open, not the same trigger
    }[policy]
    assert entered == set(expected) and result.enrolled == len(expected)
