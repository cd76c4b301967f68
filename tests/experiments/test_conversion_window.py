"""No conclusion while the conversion window is still open for most exposures.

A broadcast assigns its whole audience within a minute. Minutes later the fixed-horizon plan
counted every exposure as "reached" and the report said "Planned sample reached without a clear
difference" with a 7-day window barely started. Now the plan counts only customers whose window
has closed, the report says how far into the window the exposures are and when the result is
readable, and auto-retire (the admin's "Check now" and the 15-minute refresh) holds back in the
same situation."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone

from experiments.models import Arm, Assignment, Experiment
from experiments.services.analysis import experiment_analyze, experiment_auto_retire
from experiments.tasks import experiments_refresh
from journeys.engine.scheduler import schedules_run
from journeys.models import Event
from tests.experiments.factories import assign_batch, make_customers, make_experiment, make_goal_events, steps
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

ARMS = [{"name": "control", "control": True}, {"name": "b"}]
WEEK = 7 * 86400


@pytest.fixture
def ops(client):
    client.force_login(UserFactory(username="ops", is_staff=True, is_superuser=True))
    return client


def report_text(client, experiment) -> str:
    response = client.get(reverse("admin:experiments_experiment_report", args=[experiment.pk]))
    assert response.status_code == 200
    return response.content.decode()


def broadcast(publish, experiment: Experiment, audience: int) -> None:
    """A cron broadcast over everyone, split by the experiment, fired now by the engine's schedule task."""
    make_customers(audience, prefix="u", traits={"plan": "pro"})
    publish({"trigger_kind": "schedule", "trigger_config": {"cron": "* * * * *", "segment": "profile.plan == 'pro'"},
             "steps": steps(("split", "experiment_split", {"experiment": experiment.key}),
                            ("tag_a", "update_profile", {"traits": {"got": "a"}}),
                            ("tag_b", "update_profile", {"traits": {"got": "b"}})),
             "edges": [{"from": "split", "outcome": "control", "to": "tag_a"},
                       {"from": "split", "outcome": "b", "to": "tag_b"}]})
    assert schedules_run(now=timezone.now()) == audience


def assign(experiment, customers, now=None) -> list:
    return assign_batch(experiment, customers, now=now)  # the engine's path, recorded as a batch


def time_passes(span: timedelta) -> None:
    """As if the broadcast and its conversions had happened `span` earlier."""
    for assignment in Assignment.objects.all():
        Assignment.objects.filter(pk=assignment.pk).update(assigned_at=assignment.assigned_at - span)
    for event in Event.objects.filter(name="Buy"):
        Event.objects.filter(pk=event.pk).update(timestamp=event.timestamp - span)


def test_minutes_after_a_broadcast_the_report_says_when_it_is_readable_not_that_the_plan_is_reached(
        publish, send, ops):
    # given a broadcast to 120 customers, a 7-day window, a plan of a few dozen per arm, and buyers in both arms
    experiment = make_experiment(key="winter", arms=ARMS, goal_event="Buy", window_s=WEEK, baseline_rate=0.3,
                                 min_detectable_effect=0.3)
    broadcast(publish, experiment, 120)
    for assignment in Assignment.objects.select_related("customer").order_by("id")[::4]:
        send(userId=assignment.customer.external_id, event="Buy")  # the order events, through the API

    # when ops open the report minutes later
    text = report_text(ops, experiment)

    # then it says the window has barely started and when the result is readable, and concludes nothing
    analysis = experiment_analyze(experiment=experiment)
    assert analysis.min_arm_exposures > analysis.plan_per_arm  # the old rule: "planned sample reached"
    assert not analysis.plan_reached and not analysis.maturity.readable
    assert "Planned sample reached" not in text
    assert "Too early to conclude: 0 of the 120 exposures have had their full 7d conversion window" in text
    readable = min(Assignment.objects.values_list("assigned_at", flat=True)) + timedelta(days=7)
    assert f"readable from {readable:%Y-%m-%d}" in text
    assert "0 of them past their 7d conversion window" in text
    # and the funnel, whose runs ended at the split, names what it counts instead of "converted 0"
    assert "converted 0" not in text and "reached the version's goal 0" in text
    assert "not the experiment's metric above\n (“Buy” within 7d of entry)" in text

    # and "Check now" retires nothing, saying why
    response = ops.post(reverse("admin:experiments_experiment_act", args=[experiment.pk]),
                        {"action": "auto_retire"}, follow=True)
    assert "Auto-retired: none (too early: 0 of 120 exposures have had their full 7d window" in \
        response.content.decode()

    # when the week has passed
    time_passes(timedelta(days=8))

    # then the plan counts them and the report reads the result
    text = report_text(ops, experiment)
    assert "Too early" not in text
    assert "Planned sample reached without a clear difference." in text
    assert experiment_analyze(experiment=experiment).plan_reached


def test_auto_retire_waits_for_the_window_like_the_report_then_retires_the_worse_arm():
    # given an arm that converts far worse, everyone assigned at once, a 7-day window
    experiment = make_experiment(key="bad", goal_event="Buy", window_s=WEEK, auto_retire=True,
                                 arms=[{"name": "control", "control": True}, {"name": "bad"}])
    decisions = assign(experiment, make_customers(2000))
    rng = np.random.default_rng(5)
    rates = {"control": 0.30, "bad": 0.10}
    make_goal_events([d.assignment.customer for d in decisions if rng.random() < rates[d.group]], name="Buy",
                     at=timezone.now() + timedelta(minutes=5))
    an_hour_later = timezone.now() + timedelta(hours=1)

    # when the refresh looks an hour later
    from experiments.services.analysis import experiment_auto_retire_check

    early = experiment_analyze(experiment=experiment, now=an_hour_later)
    retired, held = experiment_auto_retire_check(experiment=experiment, now=an_hour_later)

    # then the counts already show it, but the always-valid test has no look with a closed window yet,
    # and neither the report nor auto-retire acts on it
    bad = next(g for g in early.groups if g.name == "bad")
    assert bad.diff[0] < 0 and bad.p_always_valid is None and not bad.significant
    assert early.recommendation.startswith("Too early to conclude")
    assert "Worse than control" not in early.recommendation
    assert retired == [] and held.startswith("too early: 0 of 2000 exposures")
    assert Arm.objects.get(name="bad").retired_at is None

    # when the week has passed
    a_week_later = timezone.now() + timedelta(days=7, hours=1)

    # then both say it and auto-retire acts
    assert "Worse than control: bad" in experiment_analyze(experiment=experiment, now=a_week_later).recommendation
    assert [a.name for a in experiment_auto_retire(experiment=experiment, now=a_week_later)] == ["bad"]


def test_the_scheduled_refresh_holds_back_while_the_windows_are_open():
    # given an auto-retire experiment whose worse arm was assigned an hour ago, with a 7-day window
    fixed = make_experiment(key="fixed", goal_event="Buy", auto_retire=True,
                            arms=[{"name": "control", "control": True}, {"name": "bad"}])
    decisions = assign(fixed, make_customers(1200), now=timezone.now() - timedelta(hours=1))
    make_goal_events([d.assignment.customer for i, d in enumerate(decisions) if d.arm.name == "control" and i % 3 == 0],
                     name="Buy", at=timezone.now() - timedelta(minutes=55))

    # when the 15-minute refresh runs
    experiments_refresh()

    # then nothing is retired
    assert fixed.arms.get(name="bad").retired_at is None


def test_a_steady_experiment_counts_toward_the_plan_only_the_customers_whose_window_closed():
    # given entries spread over 30 days with a 7-day window (most windows closed) and a large plan
    experiment = make_experiment(key="steady", arms=ARMS, goal_event="Buy", window_s=WEEK)
    now = timezone.now()
    customers = make_customers(300)
    for i, customer in enumerate(customers):
        assign(experiment, [customer], now=now - timedelta(hours=i * 2.4))

    # when the report is computed
    analysis = experiment_analyze(experiment=experiment, now=now)

    # then it is readable, and the plan counts only the closed windows of the smallest arm
    closed = {arm: Assignment.objects.filter(experiment=experiment, arm__name=arm, holdout=False,
                                             assigned_at__lte=now - timedelta(days=7)).count() for arm in ("control", "b")}
    assert analysis.maturity.readable
    assert analysis.maturity.min_arm_closed == min(closed.values()) < analysis.min_arm_exposures
    assert analysis.recommendation.startswith(
        f"Keep running: {min(closed.values())} of the {analysis.plan_per_arm} customers per arm the fixed-horizon "
        "plan needs have had their full 7d window")
