"""Next-best-action: a per-arm logistic regression picks the arm each customer responds to best."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from sklearn.linear_model import LogisticRegression

from experiments.models import Assignment
from experiments.services.assignment import assignment_decide
from experiments.services.nba import nba_explain, nba_train
from journeys.models import Customer
from tests.experiments.factories import make_customers, make_experiment, make_goal_events

pytestmark = pytest.mark.django_db


def simulate(experiment, customers, rng):
    """Big spenders answer the 'vip' offer; everyone else answers the control message."""
    decisions = [assignment_decide(experiment=experiment, customer=c, now=timezone.now()) for c in customers]
    converters = []
    for d in decisions:
        big = d.assignment.customer.traits["ltv"] >= 500
        p = {("vip", True): 0.5, ("vip", False): 0.05, ("control", True): 0.1, ("control", False): 0.3}[
            (d.arm.name, big)
        ]
        if rng.random() < p:
            converters.append(d.assignment.customer)
    return decisions, converters


def test_model_learns_who_responds_to_what_and_the_split_uses_it():
    rng = np.random.default_rng(2)
    experiment = make_experiment(
        mode="personalized",
        goal_event="Order Completed",
        exploration_share=0.1,
        arms=[{"name": "control", "control": True}, {"name": "vip"}],
    )
    training = make_customers(400, prefix="t")
    for c in training:
        c.traits = {"ltv": int(rng.choice([50, 100, 800, 1200]))}
    Customer.objects.bulk_update(training, ["traits"])
    decisions, converters = simulate(experiment, training, rng)
    make_goal_events(converters, name="Order Completed", at=timezone.now() + timedelta(minutes=1))
    assert all(d.assignment.via == "hash" for d in decisions)  # no model yet: random

    model = nba_train(experiment=experiment, features=["ltv"], now=timezone.now() + timedelta(hours=1))

    # the stored parameters predict what scikit-learn predicts
    X = np.array([[c.traits["ltv"]] for c in training], dtype=float)
    mean, scale = np.array(model.params["mean"]), np.array(model.params["scale"])
    conv = {c.pk for c in converters}
    for arm in ("control", "vip"):
        rows = [i for i, d in enumerate(decisions) if d.arm.name == arm]
        y = np.array([decisions[i].assignment.customer_id in conv for i in rows], dtype=int)
        reference = LogisticRegression(C=1.0, max_iter=1000).fit((X[rows] - mean) / scale, y)
        probe = Customer.objects.create(external_id=f"probe-{arm}", traits={"ltv": 900})
        ours = next(e for e in nba_explain(model=model, customer=probe) if e.arm == arm).probability
        assert ours == pytest.approx(reference.predict_proba((np.array([[900.0]]) - mean) / scale)[0, 1], rel=1e-6)

    rich = Customer.objects.create(external_id="rich", traits={"ltv": 1500})
    poor = Customer.objects.create(external_id="poor", traits={"ltv": 20})
    explained = nba_explain(model=model, customer=rich)
    assert explained[0].arm == "vip" and explained[0].contributions[0][0] == "ltv"
    assert nba_explain(model=model, customer=poor)[0].arm == "control"

    newcomers = make_customers(200, prefix="n")
    for c in newcomers:
        c.traits = {"ltv": 1000 if c.pk % 2 else 30}
    Customer.objects.bulk_update(newcomers, ["traits"])
    chosen = [assignment_decide(experiment=experiment, customer=c, now=timezone.now()) for c in newcomers]
    by_model = [d for d in chosen if d.assignment.via == "model"]
    assert 0.8 < len(by_model) / len(chosen) < 0.97  # ~10% keep exploring
    assert all(d.arm.name == ("vip" if d.assignment.customer.traits["ltv"] >= 500 else "control") for d in by_model)
    assert all(set(d.assignment.scores) == {"control", "vip"} for d in by_model)
    assert Assignment.objects.filter(via="model").count() == len(by_model)


def test_the_scheduled_task_retrains_a_day_old_model_on_new_evidence():
    from experiments.models import PropensityModel
    from experiments.tasks import experiments_refresh

    rng = np.random.default_rng(9)
    experiment = make_experiment(
        mode="personalized", goal_event="Order Completed", arms=[{"name": "control", "control": True}, {"name": "vip"}]
    )
    customers = make_customers(80, prefix="old", traits={"ltv": 100})
    long_ago = timezone.now() - timedelta(days=3)
    decisions = [assignment_decide(experiment=experiment, customer=c, now=long_ago) for c in customers]
    make_goal_events(
        [d.assignment.customer for d in decisions if rng.random() < 0.3],
        name="Order Completed",
        at=long_ago + timedelta(hours=1),
    )
    first = nba_train(experiment=experiment, features=["ltv"], now=long_ago + timedelta(hours=2))

    assert experiments_refresh() == 1

    latest = PropensityModel.objects.filter(experiment=experiment).first()
    assert latest.pk != first.pk and latest.features == ["ltv"] and latest.samples == 80
    assert experiments_refresh() == 0  # fresh model: nothing to do


def test_retraining_learns_from_the_newest_settled_exposures_up_to_the_sample_size(settings):
    """Given 60 randomised exposures whose window has closed (the 20 oldest converted), 20 still
    open (all converted already) and 10 held out, when the model is trained with a sample of 40,
    then it learns from the 40 newest settled ones: none of them converted, and neither the open
    ones nor the holdout are in it."""
    settings.NBA_TRAIN_SAMPLES = 40
    experiment = make_experiment(mode="personalized", goal_event="Order Completed", window_s=86400,
                                 arms=[{"name": "control", "control": True}, {"name": "vip"}])
    now = timezone.now()
    settled = make_customers(60, prefix="s", traits={"ltv": 100})
    for i, customer in enumerate(settled):  # the oldest first, two days ago and earlier
        assignment_decide(experiment=experiment, customer=customer, now=now - timedelta(days=3, minutes=60 - i))
    open_ = make_customers(20, prefix="o", traits={"ltv": 100})
    for customer in open_:
        assignment_decide(experiment=experiment, customer=customer, now=now - timedelta(hours=2))
    make_goal_events(settled[:20], name="Order Completed", at=now - timedelta(days=2, hours=23))
    make_goal_events(open_, name="Order Completed", at=now - timedelta(hours=1), prefix="open")
    held = make_customers(10, prefix="h", traits={"ltv": 100})
    Assignment.objects.bulk_create([Assignment(experiment=experiment, customer=c, arm=experiment.control, holdout=True,
                                               bucket=0.5, assigned_at=now - timedelta(days=3)) for c in held])

    model = nba_train(experiment=experiment, features=["ltv"], now=now)

    assert model.samples == 40
    assert sum(p["n"] for p in model.params["arms"].values()) == 40
    assert sum(p["positives"] for p in model.params["arms"].values()) == 0

    settings.NBA_TRAIN_SAMPLES = 70  # more than settled: the newest open ones fill the sample
    model = nba_train(experiment=experiment, features=["ltv"], now=now)
    assert model.samples == 70
    assert sum(p["positives"] for p in model.params["arms"].values()) == 20 + 10  # every settled one, 10 open
