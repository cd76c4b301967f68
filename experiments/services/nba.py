"""Next-best-action: pick the arm each customer is most likely to respond to.

One logistic regression per arm (scikit-learn, trained on the experiment's own
randomised assignments, so the per-arm models are unbiased) predicts the chance
that this customer converts on that arm; the split sends the customer to the
arm with the highest prediction, except an `exploration_share` that stays
random so the models keep learning (epsilon-greedy contextual bandit).
Parameters are stored as JSON and prediction is a dot product, which the admin
explains feature by feature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from experiments.models import Experiment, PropensityModel
from experiments.services.analysis import exposures_sample
from journeys.engine.batch import ids_q
from journeys.engine.runtime import profile_dict
from journeys.models import Customer

MIN_SAMPLES = 30
# A model learns from at most this many randomised exposures (the newest settled ones), so the
# daily retraining costs the sample, not the whole history (settings.NBA_TRAIN_SAMPLES).
TRAIN_SAMPLES = 50_000


def train_samples() -> int:
    return max(MIN_SAMPLES, int(getattr(settings, "NBA_TRAIN_SAMPLES", TRAIN_SAMPLES)))


def _number(value) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return 0.0
    return 0.0


def nba_features(*, customer: Customer, features: list[str], now: datetime) -> np.ndarray:
    """Numeric profile values (traits and computed ones like tenure_days); missing -> 0."""
    profile = profile_dict(customer, now)
    return np.array([_number(profile.get(name)) for name in features], dtype=float)


def nba_train(
    *, experiment: Experiment, features: list[str], now: datetime | None = None, actor=None
) -> PropensityModel:
    """Fit one logistic regression per arm on randomised (hash-assigned) exposures and store it:
    the newest `NBA_TRAIN_SAMPLES` (50,000) whose window has closed, then the newest still open.
    The model decides who gets which arm, so training it is an ops operation (actor None: the system)."""
    from experiments.services.experiments import experiment_authorize

    experiment_authorize(actor=actor, experiment=experiment)
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    now = now or timezone.now()
    if not features:
        raise ValidationError({"features": "name at least one profile trait"})
    exposures = exposures_sample(experiment=experiment, now=now, limit=train_samples())
    if len(exposures) < MIN_SAMPLES:
        raise ValidationError(f"need at least {MIN_SAMPLES} randomised exposures to train (have {len(exposures)})")
    ids = [e.customer_id for e in exposures]
    customers = {c.pk: c for start in range(0, len(ids), 5_000)
                 for c in Customer.objects.filter(ids_q("pk", ids[start:start + 5_000]))}
    X_all = np.array([nba_features(customer=customers[e.customer_id], features=features, now=now) for e in exposures])
    y_all = np.array([e.converted_at is not None for e in exposures], dtype=int)
    mean = X_all.mean(axis=0)
    scale = X_all.std(axis=0)
    scale[scale == 0] = 1.0
    params, metrics = {}, {}
    for arm in experiment.arms.filter(retired_at__isnull=True):
        mask = np.array([e.arm == arm.name for e in exposures])
        X, y = (X_all[mask] - mean) / scale, y_all[mask]
        n, pos = int(mask.sum()), int(y.sum())
        if n == 0:
            continue
        if 0 < pos < n:
            clf = LogisticRegression(C=1.0, max_iter=1000).fit(X, y)
            intercept, coef = float(clf.intercept_[0]), [float(c) for c in clf.coef_[0]]
            p = clf.predict_proba(X)[:, 1]
            metrics[arm.name] = {"auc": float(roc_auc_score(y, p)), "log_loss": float(log_loss(y, p)), "n": n}
        else:  # one class only: a smoothed constant rate
            rate = (pos + 0.5) / (n + 1)
            intercept, coef = math.log(rate / (1 - rate)), [0.0] * len(features)
            metrics[arm.name] = {"auc": None, "log_loss": None, "n": n}
        params[arm.name] = {"intercept": intercept, "coef": coef, "n": n, "positives": pos}
    return PropensityModel.objects.create(
        experiment=experiment,
        features=list(features),
        trained_at=now,
        samples=len(exposures),
        metrics=metrics,
        params={"arms": params, "mean": mean.tolist(), "scale": scale.tolist()},
    )


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


@dataclass
class Explanation:
    arm: str
    probability: float
    intercept: float
    contributions: list[tuple[str, float, float]]  # (feature, value, contribution to the log-odds)


def nba_explain(*, model: PropensityModel, customer: Customer, now: datetime | None = None) -> list[Explanation]:
    """Predicted response per arm, best first, with each feature's push on the log-odds."""
    now = now or timezone.now()
    x = nba_features(customer=customer, features=model.features, now=now)
    z = (x - np.array(model.params["mean"])) / np.array(model.params["scale"])
    out = []
    for arm, p in model.params["arms"].items():
        contrib = [(f, float(v), float(c * zi)) for f, v, c, zi in zip(model.features, x, p["coef"], z)]
        logit = p["intercept"] + sum(c for _, _, c in contrib)
        contrib.sort(key=lambda t: -abs(t[2]))
        out.append(Explanation(arm=arm, probability=_sigmoid(logit), intercept=p["intercept"], contributions=contrib))
    out.sort(key=lambda e: -e.probability)
    return out


@dataclass
class Choice:
    arm: str
    scores: dict[str, float]
    explanation: str


def nba_model(experiment: Experiment) -> PropensityModel | None:
    """The model the split uses: the latest trained (an engine batch reads it once, not per customer)."""
    return PropensityModel.objects.filter(experiment=experiment).first()


def nba_choose(*, model: PropensityModel | None, customer: Customer, arm_names: list[str],
               now: datetime) -> Choice | None:
    """The arm with the highest predicted response among `arm_names` (None without a trained model)."""
    if model is None:
        return None
    ranked = [e for e in nba_explain(model=model, customer=customer, now=now) if e.arm in arm_names]
    if not ranked:
        return None
    best = ranked[0]
    top = ", ".join(f"{f} {c:+.2f}" for f, _, c in best.contributions[:2])
    scores = {e.arm: round(e.probability, 4) for e in ranked}
    text = (
        f"{best.arm} predicted {best.probability:.1%} ("
        + ", ".join(f"{e.arm} {e.probability:.1%}" for e in ranked[1:])
        + f"); top factors: {top or 'none'}"
    )
    return Choice(arm=best.arm, scores=scores, explanation=text)
