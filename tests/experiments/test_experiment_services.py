"""Assignment stability and accuracy, the per-arm analysis, SRM, retire/conclude and the bandit."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from scipy import stats as sps
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)

from experiments.models import Arm, Assignment, Experiment
from experiments.services.analysis import experiment_analyze, experiment_auto_retire
from experiments.services.assignment import AssignmentBatch, assignment_decide, hash_unit
from experiments.services.bandits import experiment_bandit_update
from experiments.services.experiments import (
    arm_retire,
    experiment_conclude,
    experiment_set_weights,
    experiment_stop,
)
from journeys.engine.batch import EngineBatch
from tests.experiments.factories import assign_batch, make_customers, make_experiment, make_goal_events

pytestmark = pytest.mark.django_db


def assign_all(experiment, customers, now=None):
    now = now or timezone.now()
    return [assignment_decide(experiment=experiment, customer=c, now=now) for c in customers]


def test_assignment_is_a_pure_function_of_salt_and_customer():
    experiment = make_experiment()
    customers = make_customers(200)

    first = [d.arm.name for d in assign_all(experiment, customers, now=timezone.now())]
    Assignment.objects.all().delete()  # forget everything: the hash alone decides again
    second = [d.arm.name for d in assign_all(experiment, customers)]

    assert first == second
    assert Assignment.objects.count() == 200
    assert hash_unit("s", 1) == hash_unit("s", 1) != hash_unit("t", 1)


def test_split_accuracy_within_statistical_tolerance():
    """3,000 customers at 50/30/20 with a 10% holdout, assigned by the engine batch's path: the split
    passes a chi-square goodness of fit."""
    experiment = make_experiment(
        arms=[
            {"name": "control", "control": True, "weight": 5},
            {"name": "b", "weight": 3},
            {"name": "c", "weight": 2},
        ],
        holdout_share=0.1,
    )
    customers = make_customers(3000)

    decisions = assign_batch(experiment, customers)
    assert Assignment.objects.count() == 3000

    observed = {g: sum(d.group == g for d in decisions) for g in ("control", "b", "c", "holdout")}
    expected = {"control": 0.45 * 3000, "b": 0.27 * 3000, "c": 0.18 * 3000, "holdout": 0.1 * 3000}
    _, p = sps.chisquare(list(observed.values()), list(expected.values()))
    assert p > 0.001, observed
    for group in observed:
        assert abs(observed[group] - expected[group]) < 4 * (expected[group] * (1 - expected[group] / 3000)) ** 0.5
    analysis = experiment_analyze(experiment=experiment)
    assert analysis.srm is not None and not analysis.srm.mismatch


def test_changing_weights_keeps_assigned_customers_and_srm_uses_recorded_weights():
    experiment = make_experiment()
    early = make_customers(1000, prefix="early")
    late = make_customers(1000, prefix="late")
    before = {d.assignment.customer_id: d.arm.name for d in assign_batch(experiment, early)}

    experiment_set_weights(experiment=experiment, weights={"control": 1, "short": 3}, reason="ramp up")
    experiment.refresh_from_db()
    again = {c.pk: assignment_decide(experiment=experiment, customer=c, now=timezone.now()).arm.name
             for c in early[::5]}  # a sample through the single-entry path; the batch path is the engine's
    late_groups = [d.arm.name for d in assign_batch(experiment, late)]

    assert again == {pk: before[pk] for pk in again}
    assert 0.70 < late_groups.count("short") / 1000 < 0.80
    analysis = experiment_analyze(experiment=experiment)
    assert not analysis.srm.mismatch  # expected counts follow the weights in force at each assignment
    assert analysis.srm.expected["short"] == pytest.approx(500 + 750)
    assert experiment.arms.get(name="short").history.first().history_change_reason == "ramp up"


def test_analysis_numbers_match_statsmodels():
    experiment = make_experiment(goal_event="Order Completed", holdout_share=0.2)
    customers = make_customers(3000)
    decisions = assign_batch(experiment, customers)
    rng = np.random.default_rng(3)
    rates = {"control": 0.10, "short": 0.14, "holdout": 0.07}
    converters = [d.assignment.customer for d in decisions if rng.random() < rates[d.group]]
    make_goal_events(converters, name="Order Completed", at=timezone.now() + timedelta(hours=1))

    analysis = experiment_analyze(experiment=experiment, now=timezone.now() + timedelta(days=8))  # windows closed

    by = {g.name: g for g in analysis.groups}
    for name in ("control", "short", "holdout"):
        n = sum(d.group == name for d in decisions)
        x = sum(1 for c in converters if Assignment.objects.get(customer=c).group == name)
        assert (by[name].exposures, by[name].conversions) == (n, x)
        assert by[name].ci == pytest.approx(proportion_confint(x, n, method="wilson"))
    c, t = by["control"], by["short"]
    z, p = proportions_ztest([t.conversions, c.conversions], [t.exposures, c.exposures])
    assert (t.z, t.p_value) == pytest.approx((z, p))
    low, high = confint_proportions_2indep(
        t.conversions, t.exposures, c.conversions, c.exposures, compare="diff", method="newcomb"
    )
    assert t.diff[1:] == pytest.approx((low, high))
    low, high = confint_proportions_2indep(
        t.conversions, t.exposures, c.conversions, c.exposures, compare="ratio", method="log"
    )
    assert t.rel[1:] == pytest.approx((low - 1, high - 1))
    assert 0 <= t.p_always_valid <= 1 and t.p_always_valid >= t.p_value  # the guard is more conservative
    assert analysis.messaging_effect is not None and analysis.messaging_effect.diff[0] > 0


def test_conversions_outside_the_window_do_not_count():
    experiment = make_experiment(goal_event="Order Completed", window_s=3600)
    customers = make_customers(2)
    assign_all(experiment, customers)
    make_goal_events(customers[:1], name="Order Completed", at=timezone.now() + timedelta(minutes=30), prefix="in")
    make_goal_events(customers[1:], name="Order Completed", at=timezone.now() + timedelta(hours=3), prefix="late")

    analysis = experiment_analyze(experiment=experiment, now=timezone.now() + timedelta(days=1))

    assert sum(g.conversions for g in analysis.groups) == 1


def test_sample_ratio_mismatch_is_detected_and_blocks_the_recommendation():
    experiment = make_experiment()
    customers = make_customers(2000)
    assign_batch(experiment, customers)
    # A logging bug: a third of the 'short' exposures were lost.
    lost = list(Assignment.objects.filter(arm__name="short").values_list("pk", flat=True))[:330]
    Assignment.objects.filter(pk__in=lost).delete()

    analysis = experiment_analyze(experiment=experiment)

    assert analysis.srm.mismatch
    assert any(w.startswith("SAMPLE RATIO MISMATCH") for w in analysis.warnings)
    assert analysis.recommendation.startswith("Do not act")


def test_retire_an_arm_records_history_and_sends_nobody_new_there():
    experiment = make_experiment(arms=[{"name": "control", "control": True}, {"name": "b"}, {"name": "c"}])
    early = make_customers(300, prefix="e")
    assign_all(experiment, early)
    arm_b = experiment.arms.get(name="b")
    on_b = list(Assignment.objects.filter(arm=arm_b).values_list("customer_id", flat=True))

    arm_retire(arm=arm_b, reason="worse on conversion")
    experiment.refresh_from_db()
    late = assign_all(experiment, make_customers(300, prefix="l"))

    assert not any(d.arm.name == "b" for d in late)
    record = Arm.objects.get(pk=arm_b.pk).history.first()
    assert record.history_change_reason == "retired: worse on conversion" and record.weight == 0
    returning = assignment_decide(
        experiment=experiment, customer=early[0].__class__.objects.get(pk=on_b[0]), now=timezone.now()
    )
    assert returning.arm.name == "control" and "retired" in returning.reason
    with pytest.raises(ValidationError):
        arm_retire(arm=experiment.arms.get(name="control"), reason="no")


def test_conclude_sends_new_entries_to_the_winner_and_is_in_history():
    experiment = make_experiment(holdout_share=0.1)
    assign_all(experiment, make_customers(100, prefix="a"))

    experiment_conclude(experiment=experiment, winner=experiment.arms.get(name="short"), reason="+3pp, p<0.01")
    experiment.refresh_from_db()
    later = assign_all(experiment, make_customers(100, prefix="z"))

    assert {d.arm.name for d in later} == {"short"} and not any(d.holdout for d in later)
    assert Assignment.objects.count() == 100
    assert experiment.history.first().history_change_reason.startswith("concluded, winner short")
    assert experiment.status == "concluded"


def test_stopped_experiment_sends_control_unrecorded():
    experiment = make_experiment()
    experiment_stop(experiment=experiment)
    experiment.refresh_from_db()
    decisions = assign_all(experiment, make_customers(20))
    assert {d.arm.name for d in decisions} == {"control"} and Assignment.objects.count() == 0


def test_auto_retire_removes_a_clearly_worse_arm():
    # a 30-minute window: an hour later every window has closed (before that auto-retire waits)
    experiment = make_experiment(
        goal_event="Order Completed", auto_retire=True, window_s=1800,
        arms=[{"name": "control", "control": True}, {"name": "bad"}]
    )
    decisions = assign_batch(experiment, make_customers(2000))
    rng = np.random.default_rng(5)
    rates = {"control": 0.30, "bad": 0.10}
    make_goal_events(
        [d.assignment.customer for d in decisions if rng.random() < rates[d.group]],
        name="Order Completed",
        at=timezone.now() + timedelta(minutes=5),
    )

    retired = experiment_auto_retire(experiment=experiment, now=timezone.now() + timedelta(hours=1))

    assert [a.name for a in retired] == ["bad"]
    assert Arm.objects.get(name="bad").history.first().history_change_reason.startswith("retired: auto-retired")


def test_bandit_converges_to_the_better_arm_on_simulated_data():
    """Three arms converting at 5%, 8% and 12%: Thompson sampling moves traffic to the 12% arm."""
    experiment = make_experiment(
        mode="bandit",
        goal_event="Order Completed",
        window_s=60,  # a batch's outcomes are known by the update, two minutes on
        bandit_every=100,
        arms=[{"name": "control", "control": True}, {"name": "b"}, {"name": "c"}],
    )
    rates = {"control": 0.05, "b": 0.08, "c": 0.12}
    rng = np.random.default_rng(11)
    share_c = []
    for batch in range(10):
        experiment.refresh_from_db()
        customers = make_customers(200, prefix=f"r{batch}-")
        decisions = assign_batch(experiment, customers)
        share_c.append(sum(d.arm.name == "c" for d in decisions) / len(decisions))
        make_goal_events(
            [d.assignment.customer for d in decisions if rng.random() < rates[d.arm.name]],
            name="Order Completed",
            prefix=f"g{batch}",
        )
        experiment_bandit_update(experiment=experiment, now=timezone.now() + timedelta(minutes=2))

    weights = {a.name: a.weight for a in Experiment.objects.get(pk=experiment.pk).arms.all()}
    assert max(weights, key=weights.get) == "c" and weights["c"] > 0.7, weights
    # Traffic moves to it. How fast depends on the sample (the hash places customers by id, and the
    # ids differ with the tests that ran before): over 32 samples the last three batches held
    # 0.54-0.94 of the traffic (0.22-1.6 more than the first three), one in CI 0.37 after an
    # unlucky start (0.33, 0.11, 0.16; +0.52).
    assert share_c[0] < 0.5 and sum(share_c[-3:]) > sum(share_c[:3]) + 0.1, share_c
    assert experiment.arms.get(name="c").history.filter(history_change_reason__startswith="bandit update").exists()


def test_significant_reads_the_experiments_alpha():
    from experiments.stats import msprt_pvalue

    # given an experiment tested at alpha 0.2, where short beats control with an always-valid p
    # between 0.05 and 0.2 (all on one day: one look)
    now = timezone.now()
    t0 = now - timedelta(hours=6)
    experiment = make_experiment(key="alpha", goal_event="buy", alpha=0.2, min_detectable_effect=0.1, now=t0,
                                 window_s=3600)
    groups: dict[str, list] = {"control": [], "short": []}
    for customer in make_customers(200, prefix="al"):
        groups[assignment_decide(experiment=experiment, customer=customer, now=t0).group].append(customer)
    n1, n2 = len(groups["short"]), len(groups["control"])
    x2 = n2 // 10
    x1 = next(x for x in range(x2, n1) if msprt_pvalue(x, n1, x2, n2, tau=0.1) < 0.15)
    make_goal_events(groups["short"][:x1] + groups["control"][:x2], name="buy", at=t0 + timedelta(minutes=1))

    short = next(g for g in experiment_analyze(experiment=experiment, now=now).groups if g.name == "short")

    # then it is significant at the experiment's alpha, not at a fixed 0.05
    assert 0.05 < short.p_always_valid < 0.2
    assert short.significant
