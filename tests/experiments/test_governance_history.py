"""Experiments keep who/when/why: the experiment (holdout, bandit and next-best-action settings)
and its arms ask for a reason in the admin; the services that change them outside the admin
(conclude, retire, weights) record the actor and the reason on the history row."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse

from experiments.models import Arm
from experiments.services.experiments import arm_retire, experiment_conclude, experiment_set_weights
from tests.experiments.factories import make_experiment
from tests.factories import UserFactory
from tests.journeys.test_governance_fixtures import admin_form_data, assert_change_needs_a_reason

pytestmark = pytest.mark.django_db


CASES = {
    "holdout and bandit settings": (
        lambda: make_experiment(key="welcome", start=False),
        {"holdout_share": 0.1, "bandit_floor": 0.05, "exploration_share": 0.2},
        lambda e: (e.holdout_share, e.bandit_floor, e.exploration_share) == (0.1, 0.05, 0.2),
    ),
    "arm": (lambda: make_experiment(key="welcome", start=False).arms.get(name="short"), {"weight": 2.5},
            lambda a: a.weight == 2.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_experiment_config_change_needs_a_reason_and_keeps_who_and_why(admin_client, admin_user, case):
    make, changes, changed = CASES[case]
    saved = assert_change_needs_a_reason(admin_client, admin_user, make(), changes)
    assert changed(saved)


def test_arms_saved_with_their_experiment_carry_the_reason(admin_client, admin_user):
    experiment = make_experiment(key="welcome", start=False)
    url = reverse("admin:experiments_experiment_change", args=[experiment.pk])
    data = admin_form_data(admin_client.get(url), change_reason="short arm gets twice the traffic")
    index = next(i for i in range(2) if data[f"arms-{i}-name"] == "short")
    data[f"arms-{index}-weight"] = 2

    assert admin_client.post(url, data).status_code == 302

    row = Arm.objects.get(experiment=experiment, name="short").history.latest("history_date")
    assert (row.weight, row.history_user, row.history_change_reason) == (
        2.0, admin_user, "short arm gets twice the traffic")


def test_services_record_actor_and_reason_and_refuse_people_without_the_right():
    experiment = make_experiment(key="welcome")
    ops = UserFactory(username="ops", is_superuser=True, is_staff=True)
    outsider = UserFactory(username="outsider", is_staff=True)
    short = experiment.arms.get(name="short")

    with pytest.raises(PermissionDenied):
        experiment_set_weights(experiment=experiment, weights={"short": 3}, actor=outsider, reason="more")
    with pytest.raises(ValidationError) as exc:
        experiment_set_weights(experiment=experiment, weights={"short": 3}, actor=ops, reason="")
    assert "reason" in exc.value.message_dict

    experiment_set_weights(experiment=experiment, weights={"short": 3}, actor=ops, reason="ramp up")
    arm_retire(arm=short, actor=ops, reason="worse on refunds")
    experiment_conclude(experiment=experiment, winner=experiment.control, actor=ops, reason="control is cheaper")

    weights, retired = short.history.order_by("history_date")[1:3]
    assert (weights.history_user, weights.history_change_reason) == (ops, "ramp up")
    assert (retired.history_user, retired.history_change_reason) == (ops, "retired: worse on refunds")
    concluded = experiment.history.latest("history_date")
    assert concluded.history_user == ops and "control is cheaper" in concluded.history_change_reason
