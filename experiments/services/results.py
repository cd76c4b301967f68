"""An experiment's results as plain data, for the management API (GET /api/v1/experiments/<id>/
results): the numbers of the report page, read from the same `experiment_analyze` the page
renders, never recomputed here."""

from __future__ import annotations

import math
from datetime import datetime

from django.db.models import F, Prefetch, QuerySet

from experiments.models import Arm, Experiment
from experiments.services.analysis import Analysis, GroupStats, experiment_analyze


def experiments_list(*, with_arms: bool = False) -> QuerySet[Experiment]:
    """Every experiment with its winner's name; `with_arms` also loads the arms (detail view)."""
    queryset = Experiment.objects.annotate(winner_name=F("winner__name"))
    if with_arms:
        queryset = queryset.prefetch_related(Prefetch("arms", queryset=Arm.objects.order_by("-is_control", "name")))
    return queryset


def _number(value: float | None) -> float | None:
    """JSON has no NaN or infinity (an empty arm's ratio): those read as null."""
    return value if value is None or math.isfinite(value) else None


def _interval(values: tuple[float, float, float] | None) -> dict | None:
    if values is None:
        return None
    value, low, high = (_number(v) for v in values)
    return {"value": value, "low": low, "high": high}


def _secondary(values: object) -> object:
    if isinstance(values, dict):
        return {key: _secondary(value) for key, value in values.items()}
    return _number(values) if isinstance(values, float) else values


def _group(stats: GroupStats) -> dict:
    return {
        "name": stats.name, "is_control": stats.is_control, "holdout": stats.holdout, "retired": stats.retired,
        "weight": _number(stats.weight), "exposures": stats.exposures, "conversions": stats.conversions,
        "rate": _number(stats.rate), "ci_low": _number(stats.ci[0]), "ci_high": _number(stats.ci[1]),
        "abs_lift": _interval(stats.diff), "rel_lift": _interval(stats.rel), "z": _number(stats.z),
        "p_value": _number(stats.p_value), "p_always_valid": _number(stats.p_always_valid),
        "significant": stats.significant, "direction": stats.direction, "secondary": _secondary(stats.secondary),
    }


def analysis_data(analysis: Analysis) -> dict:
    """The report page's numbers (arms table, sample-ratio check, plan, maturity, messaging
    effect, warnings, recommendation) as JSON-ready data."""
    srm, maturity = analysis.srm, analysis.maturity
    return {
        "computed_at": analysis.computed_at,
        "groups": [_group(g) for g in analysis.groups],
        "srm": None if srm is None else {"chi2": _number(srm.chi2), "p_value": _number(srm.p_value),
                                         "observed": srm.observed, "expected": _secondary(srm.expected),
                                         "mismatch": srm.mismatch, "message": srm.message},
        "plan_per_arm": analysis.plan_per_arm,
        "min_arm_exposures": analysis.min_arm_exposures,
        "plan_reached": analysis.plan_reached,
        "maturity": {"readable": maturity.readable, "readable_at": maturity.readable_at,
                     "exposures": maturity.exposures, "closed": maturity.closed,
                     "window_s": int(maturity.window.total_seconds())},
        "messaging_effect": None if analysis.messaging_effect is None else _group(analysis.messaging_effect),
        "warnings": analysis.warnings,
        "recommendation": analysis.recommendation,
    }


def experiment_results(*, experiment: Experiment, now: datetime | None = None) -> dict:
    """What the report page shows for `experiment` (its `experiment_analyze`, secondary metrics
    included), as data."""
    return analysis_data(experiment_analyze(experiment=experiment, now=now))
