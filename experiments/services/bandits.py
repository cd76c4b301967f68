"""Bandit mode: Thompson sampling moves weight toward arms that convert better.

Weights become P(arm is best) under Beta posteriors of each arm's conversions
(with a floor so no arm starves), recomputed every `bandit_every` new
assignments (by a queued task, at most once a minute) and by the scheduled task.
Assignment stays hash-based and sticky; only customers not yet assigned feel
the new weights.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from django.db import transaction
from django.utils import timezone

from experiments.choices import ExperimentMode, ExperimentStatus
from experiments.models import Arm, Assignment, Experiment
from experiments.services.hashing import hash_unit
from experiments.stats import thompson_prob_best


BANDIT_MIN_INTERVAL = timedelta(minutes=1)  # weights move at most this often as assignments arrive


def bandit_maybe_update(*, experiment: Experiment, now: datetime) -> bool:
    """Called after new assignments are recorded (inside the engine's batch): when `bandit_every`
    assignments arrived since the last update, and the last is more than BANDIT_MIN_INTERVAL old,
    queue `experiments.tasks.bandit_update`. The update reads the outcome of every assignment and
    locks the experiment; done here it would hold every other batch of a broadcast waiting on that
    lock, and run once a batch. The task decides again under the lock (a few may be queued at
    once; the first does the work). Returns whether it was queued."""
    from journeys.engine.queue import enqueue_work

    mark = Experiment.objects.filter(pk=experiment.pk).values("assignments_at_update", "weights_updated_at").first()
    if mark is None or _updated_lately(mark["weights_updated_at"], now):
        return False
    if _assigned(experiment.pk) - mark["assignments_at_update"] < max(1, experiment.bandit_every):
        return False
    enqueue_work("experiments.tasks.bandit_update", experiment.pk, now, group="experiments")
    return True


def bandit_update_due(*, experiment_id: int, now: datetime) -> dict[str, float]:
    """The queued update: recompute the weights unless another update came first (fewer than
    `bandit_every` new assignments since, or one less than BANDIT_MIN_INTERVAL ago)."""
    with transaction.atomic():
        experiment = Experiment.objects.select_for_update().filter(pk=experiment_id).first()
        if (experiment is None or _updated_lately(experiment.weights_updated_at, now)
                or _assigned(experiment_id) - experiment.assignments_at_update < max(1, experiment.bandit_every)):
            return {}
        return experiment_bandit_update(experiment=experiment, now=now)


def _updated_lately(updated_at: datetime | None, now: datetime) -> bool:
    return updated_at is not None and updated_at > now - BANDIT_MIN_INTERVAL


def _assigned(experiment_id: int) -> int:
    return Assignment.objects.filter(experiment_id=experiment_id, holdout=False).count()


@transaction.atomic
def experiment_bandit_update(
    *, experiment: Experiment, now: datetime | None = None, actor=None, draws: int = 20_000
) -> dict[str, float]:
    """Recompute weights from the evidence so far; returns the new weights (arm -> share)."""
    from experiments.services.analysis import group_counts
    from experiments.services.experiments import experiment_authorize

    experiment_authorize(actor=actor, experiment=experiment)

    now = now or timezone.now()
    experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
    if experiment.mode != ExperimentMode.BANDIT or experiment.status != ExperimentStatus.RUNNING:
        return {}
    arms = [a for a in Arm.objects.select_for_update().filter(experiment=experiment) if a.retired_at is None]
    counts = group_counts(experiment=experiment, now=now)
    s = [counts.get(a.name, (0, 0))[1] for a in arms]
    f = [counts.get(a.name, (0, 0))[0] - counts.get(a.name, (0, 0))[1] for a in arms]
    n_total = _assigned(experiment.pk)
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
    experiment._change_reason = "bandit weights updated"
    experiment.save(update_fields=["weights_updated_at", "assignments_at_update", "updated_at"])
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
