"""Secondary metrics (open/click from deliveries, completion, resolution time), the q2 task, merges."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from experiments.models import Assignment, Experiment
from experiments.services.analysis import experiment_analyze
from experiments.services.assignment import assignment_decide
from experiments.tasks import experiments_refresh
from journeys.models import Customer, JourneyRun
from tests.experiments.factories import (
    make_customers,
    make_experiment,
    make_goal_events,
    split_workflow,
)

pytestmark = pytest.mark.django_db


def test_open_and_click_rates_come_from_deliveries_in_the_window():
    from channels_app.models import Channel, Delivery, MessageTemplate

    fields = {f.name for f in Delivery._meta.get_fields()}
    email = Channel.objects.create(name="email", kind="email")
    template = MessageTemplate.objects.create(name="hello", subject="hi", body="hi")
    experiment = make_experiment(secondary_metrics=["open_rate", "click_rate", "resolution_time"])
    decisions = [assignment_decide(experiment=experiment, customer=c, now=timezone.now()) for c in make_customers(20)]
    opened = {}
    for i, d in enumerate(decisions):
        delivery = Delivery.objects.create(
            idempotency_key=f"k{i}", customer=d.assignment.customer, channel=email, template=template, status="sent"
        )
        if i % 2 and "opened_at" in fields:
            Delivery.objects.filter(pk=delivery.pk).update(opened_at=timezone.now())
            opened[d.group] = opened.get(d.group, 0) + 1
        Delivery.objects.create(
            idempotency_key=f"s{i}",
            customer=d.assignment.customer,
            channel=email,
            template=template,
            status="suppressed",
        )
        Delivery.objects.create(  # sent, then the recipient's server refused the address
            idempotency_key=f"b{i}", customer=d.assignment.customer, channel=email, template=template,
            status="bounced", sent_at=timezone.now(),
        )

    analysis = experiment_analyze(experiment=experiment, now=timezone.now() + timedelta(minutes=1))

    for g in analysis.groups:
        n = sum(d.group == g.name for d in decisions)
        assert g.secondary["open_rate"]["n"] == n  # suppressed and bounced messages are not in the denominator
        assert g.secondary["open_rate"]["x"] == opened.get(g.name, 0)
        assert g.secondary["click_rate"]["x"] == 0
        assert g.secondary["resolution_time_h"] is None  # no cases (or no agents app): tolerated


def test_journey_completion_rate_per_arm(publish, send):
    experiment = make_experiment(secondary_metrics=["completion"])
    publish(split_workflow())
    for i in range(10):
        send(userId=f"p{i}", event="Signed Up")

    analysis = experiment_analyze(experiment=experiment)

    assert (
        sum(g.secondary["completion"]["x"] for g in analysis.groups)
        == JourneyRun.objects.filter(status="completed").count()
        == 10
    )


def test_scheduled_task_updates_bandits_and_auto_retires():
    bandit = make_experiment(key="bandit", mode="bandit", goal_event="Buy", bandit_every=10_000)
    fixed = make_experiment(  # a 30-minute window: the hour-old exposures' windows have closed
        key="fixed", goal_event="Buy", auto_retire=True, window_s=1800,
        arms=[{"name": "control", "control": True}, {"name": "bad"}]
    )
    customers = make_customers(1200)
    for c in customers[:200]:
        assignment_decide(experiment=bandit, customer=c, now=timezone.now())
    hour_ago = timezone.now() - timedelta(hours=1)
    fixed_decisions = [assignment_decide(experiment=fixed, customer=c, now=hour_ago) for c in customers]
    make_goal_events(
        [d.assignment.customer for i, d in enumerate(fixed_decisions) if d.arm.name == "control" and i % 3 == 0],
        name="Buy",
        at=hour_ago + timedelta(minutes=5),
    )

    assert experiments_refresh() == 1

    assert Experiment.objects.get(pk=bandit.pk).weights_updated_at is not None
    assert fixed.arms.get(name="bad").retired_at is not None


def test_identity_merge_moves_assignments_to_the_survivor():
    from journeys.services.identity import MERGE_HOOKS

    experiment = make_experiment()
    anonymous, known = make_customers(2)
    assignment_decide(experiment=experiment, customer=anonymous, now=timezone.now())

    for hook in MERGE_HOOKS:
        hook(anonymous, known)

    assert Assignment.objects.get().customer == known
    assert Customer.objects.count() == 2


def test_resolution_time_per_arm_from_agent_cases():
    from django.apps import apps

    try:
        Case = apps.get_model("agents", "Case")
    except LookupError:
        pytest.skip("no agents app with cases here")
    experiment = make_experiment(secondary_metrics=["resolution_time"])
    start = timezone.now() - timedelta(days=2)
    decisions = [assignment_decide(experiment=experiment, customer=c, now=start) for c in make_customers(10)]
    hours = {}
    for i, d in enumerate(decisions):
        case = Case.objects.create(customer=d.assignment.customer)
        opened = start + timedelta(hours=1)
        Case.objects.filter(pk=case.pk).update(created_at=opened, resolved_at=opened + timedelta(hours=i + 1))
        hours.setdefault(d.group, []).append(i + 1)

    analysis = experiment_analyze(experiment=experiment)

    import statistics

    for g in analysis.groups:
        if g.exposures:
            assert g.secondary["resolution_time_h"] == pytest.approx(statistics.median(hours[g.name]))


def test_the_statuses_counted_as_sent_are_those_channels_counts_as_sent():
    from channels_app.choices import SENT_STATUSES
    from experiments.services.analysis import SENT_STATUSES as EXPERIMENTS_SENT

    assert set(EXPERIMENTS_SENT) == {str(s) for s in SENT_STATUSES}
