"""Cohorts x arm, the funnel per workflow version (from the engine's StepExecution rows), attribution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from experiments.models import Assignment
from experiments.services.analysis import experiment_analyze
from experiments.services.assignment import assignment_decide
from experiments.services.reports import experiment_attribution, experiment_cohorts, version_funnel
from journeys.engine.scheduler import runs_wake_due
from tests.experiments.factories import (
    edges,
    make_customers,
    make_experiment,
    make_goal_events,
    steps,
)

pytestmark = pytest.mark.django_db

MONDAY = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def test_cohorts_by_entry_week_signup_month_and_trait():
    experiment = make_experiment(goal_event="Order Completed", now=MONDAY)
    old = make_customers(40, prefix="old", traits={"plan": "pro"}, first_seen=datetime(2025, 12, 5, tzinfo=UTC))
    new = make_customers(60, prefix="new", traits={"plan": "free"}, first_seen=datetime(2026, 2, 20, tzinfo=UTC))
    week1 = [assignment_decide(experiment=experiment, customer=c, now=MONDAY) for c in old]
    week2 = [assignment_decide(experiment=experiment, customer=c, now=MONDAY + timedelta(days=7)) for c in new]
    converters = [d.assignment.customer for d in week1[:10] + week2[:30]]
    make_goal_events(converters[:10], name="Order Completed", at=MONDAY + timedelta(days=2), prefix="w1")
    make_goal_events(converters[10:], name="Order Completed", at=MONDAY + timedelta(days=9), prefix="w2")
    later = MONDAY + timedelta(days=20)

    by_week = experiment_cohorts(experiment=experiment, kind="entry_week", now=later)
    by_month = experiment_cohorts(experiment=experiment, kind="signup_month", now=later)
    by_plan = experiment_cohorts(experiment=experiment, kind="trait", trait="plan", now=later)

    assert by_week.cohorts == ["2026-W10", "2026-W11"]
    assert by_month.cohorts == ["2025-12", "2026-02"] and by_plan.cohorts == ["free", "pro"]
    for table, label, decisions in (
        (by_week, "2026-W11", week2),
        (by_month, "2025-12", week1),
        (by_plan, "pro", week1),
    ):
        for group in table.groups:
            members = [d for d in decisions if d.group == group]
            cell = table.cell(label, group)
            assert cell.n == len(members)
            assert cell.x == sum(1 for d in members if d.assignment.customer in converters)
    total = sum(table_cell.n for table_cell in by_week.cells.values())
    assert total == 100 == sum(g.exposures for g in experiment_analyze(experiment=experiment, now=later).groups)


FUNNEL = {
    "trigger_event": "Signed Up",
    "goal_event": "",
    "steps": steps(
        ("split", "experiment_split", {"experiment": "welcome"}),
        ("tag_a", "update_profile", {"traits": {"path": "a"}}),
        ("tag_b", "update_profile", {"traits": {"path": "b"}}),
        ("wait", "wait_for_event", {"event": "Activated", "timeout": "1d"}),
        ("won", "goal", {"name": "activated"}),
        ("nudge", "update_profile", {"traits": {"nudged": True}}),
    ),
    "edges": edges(
        ("split", "control", "tag_a"),
        ("split", "short", "tag_b"),
        ("tag_a", "next", "wait"),
        ("tag_b", "next", "wait"),
        ("wait", "event", "won"),
        ("wait", "timeout", "nudge"),
    ),
}


def test_funnel_per_version_counts_reached_converted_dropped_and_time_between_steps(publish, send):
    experiment = make_experiment()
    version = publish(FUNNEL)
    for i in range(8):
        send(userId=f"f{i}", event="Signed Up")
    for i in range(3):
        send(userId=f"f{i}", event="Activated")
    runs_wake_due(now=timezone.now() + timedelta(days=1, minutes=5))

    funnel = version_funnel(version=version, experiment=experiment)

    rows = {r.step: r for r in funnel.rows}
    assert [r.step for r in funnel.rows][:2] == ["split", "tag_a"]
    assert (funnel.entered, funnel.converted, funnel.in_progress) == (8, 3, 0)
    assert rows["split"].reached == rows["wait"].reached == 8
    assert rows["tag_a"].reached + rows["tag_b"].reached == 8
    assert (rows["won"].reached, rows["nudge"].reached, rows["nudge"].dropped) == (3, 5, 5)
    assert rows["nudge"].median_from_previous_s >= 86400
    assert rows["won"].median_from_previous_s < 3600
    arms = dict(Assignment.objects.values_list("customer__external_id", "arm__name"))
    assert funnel.entered_by_group == {a: list(arms.values()).count(a) for a in set(arms.values())}
    assert sum(rows["tag_a"].by_group.values()) == rows["tag_a"].reached


def _delivery(customer, *, at, template, channel, status="sent", key=""):
    from channels_app.models import Delivery

    delivery = Delivery.objects.create(
        idempotency_key=key or f"{customer.pk}:{template.name}:{at.isoformat()}",
        customer=customer,
        channel=channel,
        template=template,
        status=status,
        step_key=template.name,
    )
    Delivery.objects.filter(pk=delivery.pk).update(created_at=at, sent_at=at)
    return delivery


def test_attribution_credits_the_last_message_within_the_window_and_the_arm():
    from channels_app.models import Channel, MessageTemplate

    email = Channel.objects.create(name="email", kind="email")
    sms = Channel.objects.create(name="sms", kind="sms")
    welcome = MessageTemplate.objects.create(name="welcome", subject="hi", body="hi")
    reminder = MessageTemplate.objects.create(name="reminder", subject="psst", body="psst")
    t0 = timezone.now() - timedelta(days=10)
    experiment = make_experiment(goal_event="Order Completed", window_s=3 * 86400, holdout_share=0.3)
    customers = make_customers(30)
    decisions = [assignment_decide(experiment=experiment, customer=c, now=t0) for c in customers]
    conversion = t0 + timedelta(days=2)
    for d in decisions:
        c = d.assignment.customer
        if d.holdout:
            _delivery(c, at=t0 + timedelta(hours=1), template=welcome, channel=email, status="suppressed")
            continue
        _delivery(c, at=t0 + timedelta(hours=1), template=welcome, channel=email)
        _delivery(c, at=t0 + timedelta(days=1), template=reminder, channel=sms)
        _delivery(c, at=conversion + timedelta(hours=1), template=welcome, channel=email, key=f"after:{c.pk}")
    make_goal_events(customers, name="Order Completed", at=conversion)

    credits = experiment_attribution(experiment=experiment)

    got = {(c.group, c.message, c.channel): c.conversions for c in credits}
    expected = {}
    for d in decisions:
        key = (d.group, "(no message)", "") if d.holdout else (d.group, "reminder", "sms")
        expected[key] = expected.get(key, 0) + 1
    assert got == expected
    cohorts = experiment_cohorts(experiment=experiment, kind="channel")
    assert set(cohorts.cohorts) == {"email"}  # the first message each customer was sent (or held back)
