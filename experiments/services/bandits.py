"""Bandit mode: Thompson sampling moves weight toward arms that convert better.

Weights become P(arm is best) under Beta posteriors of each arm's conversions
among its customers whose conversion window has closed (with a floor so no arm starves), recomputed after `bandit_every` new
assignments (checked every minute) and by the 15-minute refresh.
Assignment stays hash-based and sticky; only customers not yet assigned feel
the new weights.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from experiments.choices import ExperimentMode, ExperimentStatus
from experiments.models import Arm, Assignment, Experiment
from experiments.services.hashing import hash_unit
from experiments.stats import thompson_prob_best


def bandits_update_due(*, now: datetime | None = None) -> int:
    """q2 task, every minute (schedule `experiments.bandits`): update each running bandit with
    `bandit_every` new assignments since its last update. The engine's batches only record
    assignments: an update reads the outcome of every assignment and locks the experiment, which a
    batch of a broadcast must not wait for, nor do once per batch. So the weights move at most once
    a minute, and an update that came due within the minute is made at the next one. New means
    after the newest assignment the update saw (by id, not by anyone's clock), and the check reads
    at most `bandit_every` of them, never the experiment's whole history; a batch still assigning
    while the update ran, with older ids, is in the next update's counts. Returns how many were
    updated."""
    now = now or timezone.now()
    done = 0
    for experiment in Experiment.objects.filter(status=ExperimentStatus.RUNNING, mode=ExperimentMode.BANDIT):
        every = max(1, experiment.bandit_every)
        new = Assignment.objects.filter(experiment=experiment, holdout=False,
                                        pk__gt=experiment.assignment_id_at_update).order_by("pk")[:every]
        if experiment.weights_updated_at is not None and new.count() < every:
            continue
        experiment_bandit_update(experiment=experiment, now=now)
        done += 1
    return done


@transaction.atomic
def experiment_bandit_update(
    *, experiment: Experiment, now: datetime | None = None, actor=None, draws: int = 20_000
) -> dict[str, float]:
    """Recompute weights from the evidence so far; returns the new weights (arm -> share)."""
    from experiments.services.analysis import group_counts
    from experiments.services.experiments import experiment_authorize

    experiment_authorize(actor=actor, experiment=experiment)

    now = now or timezone.now()
    # FOR NO KEY UPDATE: the weights are not keys, so the engine's batches keep inserting
    # assignments (their foreign keys lock these rows FOR KEY SHARE) while the update runs.
    experiment = Experiment.objects.select_for_update(no_key=True).get(pk=experiment.pk)
    if experiment.mode != ExperimentMode.BANDIT or experiment.status != ExperimentStatus.RUNNING:
        return {}
    arms = [a for a in Arm.objects.select_for_update(no_key=True).filter(experiment=experiment) if a.retired_at is None]
    # Only customers whose conversion window has closed: their outcome is known. A customer still
    # inside it may yet convert, so counting them as failures makes the arm the bandit just fed
    # look worse at the next update; counting the open ones that already converted (and not the
    # others) would make it look better. Which customers have closed windows depends only on when
    # they were assigned, not on their outcome, so the closed ones' rate is unbiased. An arm with
    # no closed window yet keeps its prior, Beta(1, 1).
    counts = group_counts(experiment=experiment, now=now, closed_only=True)
    s = [counts.get(a.name, (0, 0))[1] for a in arms]
    f = [counts.get(a.name, (0, 0))[0] - counts.get(a.name, (0, 0))[1] for a in arms]
    latest = Assignment.objects.filter(experiment=experiment, holdout=False).aggregate(n=Count("pk"), last=Max("pk"))
    n_total = latest["n"]
    seed = int(hash_unit(experiment.salt, "bandit", n_total) * 2**32)
    probs = thompson_prob_best(s, f, draws=draws, rng=np.random.default_rng(seed))
    floor = min(max(experiment.bandit_floor, 0.0), 1.0 / max(1, len(arms)))
    weights = [floor + (1 - floor * len(arms)) * p for p in probs]
    result = {}
    for arm, weight, p in zip(arms, weights, probs):
        result[arm.name] = weight
        arm.weight = round(weight, 6)
        arm._change_reason = f"bandit update: P(best)={p:.3f} after {n_total} assignments"
        if actor is not None and getattr(actor, "pk", None):
            arm._history_user = actor
        arm.save(update_fields=["weight"])
    experiment.weights_updated_at = now
    experiment.assignments_at_update = n_total
    experiment.assignment_id_at_update = latest["last"] or 0
    experiment._change_reason = "bandit weights updated"
    experiment.save(update_fields=["weights_updated_at", "assignments_at_update", "assignment_id_at_update",
                                   "updated_at"])
    return result


RETRAIN_AFTER = timedelta(days=1)


def bandits_update_all(*, now: datetime | None = None) -> int:
    """q2 task: refresh every running bandit's weights, retrain next-best-action models older
    than a day (same features, new evidence) and auto-retire where enabled. Returns how many
    experiments were updated."""
    from django.core.exceptions import ValidationError

    from experiments.models import PropensityModel
    from experiments.services.analysis import experiment_auto_retire
    from experiments.services.nba import nba_train

    now = now or timezone.now()
    done = 0
    for experiment in Experiment.objects.filter(status=ExperimentStatus.RUNNING):
        if experiment.mode == ExperimentMode.BANDIT:
            experiment_bandit_update(experiment=experiment, now=now)
            done += 1
        elif experiment.mode == ExperimentMode.PERSONALIZED:
            model = PropensityModel.objects.filter(experiment=experiment).first()
            if model is not None and model.trained_at <= now - RETRAIN_AFTER:
                try:
                    nba_train(experiment=experiment, features=model.features, now=now)
                    done += 1
                except ValidationError:  # not enough randomised exposures yet
                    pass
        if experiment.auto_retire:
            experiment_auto_retire(experiment=experiment, now=now)
    return done
