"""The life of an experiment: create, start, stop, change weights, retire an arm, conclude.

Each mutation runs in one transaction and leaves a history row (simple_history)
carrying the actor and the reason.
"""

from __future__ import annotations

import math
from datetime import datetime

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from experiments.choices import HOLDOUT, ExperimentMode, ExperimentStatus, Metric
from experiments.models import Arm, Experiment
from journeys.services.governance import history_stamp, require_reason


VIEW, ADD, CHANGE, OPERATE = "view", "add", "change", "operate"

# Weights are relative (1 and 3 split a quarter / three quarters): beyond this a weight is a typo,
# and sums of such weights overflow to infinity, where every share becomes 0.
MAX_ARM_WEIGHT = 1_000_000
NO_ACTIVE_WEIGHT = "at least one active arm needs a weight above 0"
ONE_CONTROL = "only one arm can be the control"
EXACTLY_ONE_CONTROL = "exactly one arm must be the control"
RESERVED_ARM_NAME = f"{HOLDOUT!r} is reserved for the customers held out (they get no arm): name the arm otherwise"


def arm_weight_problem(weight: object) -> str:
    """What is wrong with an arm's weight, said so that it can be fixed ("" when nothing is)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        return f"must be a number from 0 to {MAX_ARM_WEIGHT:,}, e.g. 1"
    if not 0 <= weight <= MAX_ARM_WEIGHT:
        return f"must be from 0 to {MAX_ARM_WEIGHT:,} (weights are relative: 1 and 3 give a quarter and three quarters)"
    return ""


def arm_name_problem(name: str) -> str:
    """What is wrong with an arm's name ("" when nothing is); unique within the experiment is checked apart."""
    if not name:
        return "an arm needs a name"
    if name == HOLDOUT:
        return RESERVED_ARM_NAME
    return ""


# The settings an experiment runs by, as the service and the admin form check them:
# field -> (lowest, highest, what the number is); None = no bound on that side.
SETTING_RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "window_s": (1, None, "the conversion window in seconds, e.g. 604800 for 7 days"),
    "bandit_floor": (0.0, 0.5, "each arm's minimum share under the bandit, e.g. 0.02"),
    "exploration_share": (0.0, 1.0, "the share of next-best-action entrants assigned at random, e.g. 0.1"),
}


def experiment_settings_problems(values: dict) -> dict[str, str]:
    """field -> what is wrong with it, for the settings among `values` (a form's cleaned data, or an
    experiment's fields); empty when nothing is. The service refuses what this finds, and the admin
    form shows it at the field."""
    problems: dict[str, str] = {}
    for name, (low, high, what) in SETTING_RANGES.items():
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                low is not None and value < low) or (high is not None and value > high):
            bounds = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
            problems[name] = f"must be {bounds}: {what}"
    if "secondary_metrics" in values:
        metrics, known = values["secondary_metrics"] or [], ", ".join(Metric.values)
        if not isinstance(metrics, list):
            problems["secondary_metrics"] = f'must be a list of metric names, e.g. ["open_rate"] (known: {known})'
        elif unknown := [m for m in metrics if m not in Metric.values]:
            problems["secondary_metrics"] = f"unknown metric {unknown[0]!r} (known: {known})"
    return problems


def experiment_settings_check(experiment: Experiment) -> None:
    """Raise ValidationError (per field) for settings the experiment cannot run by."""
    if problems := experiment_settings_problems({name: getattr(experiment, name)
                                                  for name in (*SETTING_RANGES, "secondary_metrics")}):
        raise ValidationError(problems)


def _active(user) -> bool:
    return user is not None and getattr(user, "is_active", False) and getattr(user, "is_authenticated", False)


def experiment_user_can(user, action: str, experiment: Experiment | None = None, *, workflow=None) -> bool:
    """Who may do what to experiments (the admin asks this; the services below re-check it).

    - view:    `experiments.view_experiment` or `change_experiment` (ops, approvers, analysts); a business-unit
               editor sees the experiments of the workflows they may view (their unit's)
    - add:     `experiments.add_experiment`, or an editor for a workflow they may edit
    - change:  settings and arms: `change_experiment`, or an editor while the experiment is a draft of
               a workflow they may edit (a running experiment is live traffic: ops only)
    - operate: start, stop, weights, retire, conclude, bandit, training: `change_experiment` only
    experiment=None asks whether the user may do it to any experiment at all.
    """
    from journeys.selectors import EDIT, workflows_for_user

    if not _active(user):
        return False
    if user.has_perm("experiments.change_experiment") and action != ADD:
        return True
    if action == VIEW:
        if user.has_perm("experiments.view_experiment"):
            return True
        scope = workflows_for_user(user, VIEW)
        if experiment is None:
            return Experiment.objects.filter(workflow__in=scope).exists()
        return experiment.workflow_id is not None and scope.filter(pk=experiment.workflow_id).exists()
    if action == ADD:
        if user.has_perm("experiments.add_experiment"):
            return True
        editable = workflows_for_user(user, EDIT)
        return editable.exists() if workflow is None else editable.filter(pk=workflow.pk).exists()
    if action == CHANGE:
        editable = workflows_for_user(user, EDIT)
        if experiment is None:
            return editable.exists()
        return (experiment.status == ExperimentStatus.DRAFT and experiment.workflow_id is not None
                and editable.filter(pk=experiment.workflow_id).exists())
    return False  # operate


def experiments_for_user(user) -> QuerySet[Experiment]:
    """The experiments a user may see (selector): all for ops, approvers and analysts; an editor's units'."""
    from journeys.selectors import workflows_for_user

    if not _active(user):
        return Experiment.objects.none()
    if user.has_perm("experiments.view_experiment") or user.has_perm("experiments.change_experiment"):
        return Experiment.objects.all()
    return Experiment.objects.filter(workflow__in=workflows_for_user(user, VIEW))


def experiment_authorize(*, actor, action: str = OPERATE, experiment: Experiment | None = None, workflow=None) -> None:
    """Raise PermissionDenied unless the actor may `action` (see experiment_user_can); None is the system."""
    if actor is None:
        return
    if not experiment_user_can(actor, action, experiment, workflow=workflow):
        what = f"experiment {experiment.key!r}" if experiment is not None else "experiments"
        raise PermissionDenied(f"{actor} may not {action} {what}")


@transaction.atomic
def experiment_settings_save(*, experiment: Experiment, actor, reason: str) -> Experiment:
    """Save an experiment's settings as edited in a form (hypothesis, holdout, metrics, bandit and
    next-best-action settings). The scope is checked against the saved values and the stored row, inside
    the transaction, so nobody moves an experiment into (or out of) a unit they do not edit."""
    reason = require_reason(actor, reason)
    if experiment.pk is None:
        experiment_authorize(actor=actor, action=ADD, workflow=experiment.workflow)
        if actor is not None and not actor.has_perm("experiments.add_experiment") and experiment.workflow is None:
            raise PermissionDenied("choose a workflow of your unit for this experiment")
        if getattr(actor, "pk", None):
            experiment.created_by = actor
    else:
        stored = Experiment.objects.select_for_update().get(pk=experiment.pk)
        experiment_authorize(actor=actor, action=CHANGE, experiment=stored)
        experiment_authorize(actor=actor, action=CHANGE, experiment=experiment)
    experiment_settings_check(experiment)
    _stamp(experiment, actor=actor, reason=reason)
    experiment.save()
    return experiment


def _stamp(obj, *, actor, reason: str, at: datetime | None = None) -> None:
    """Who and why on the history row; `at`: the moment of a status change, which the report reads
    from the history (`experiments.services.analysis.paused_periods`)."""
    history_stamp(obj, actor=actor, reason=reason)
    if at is not None:
        obj._history_date = at


@transaction.atomic
def experiment_create(
    *,
    key: str,
    name: str,
    arms: list[dict],
    hypothesis: str = "",
    holdout_share: float = 0.0,
    goal_event: str = "",
    window_s: int = 7 * 86400,
    mode: str = ExperimentMode.FIXED,
    secondary_metrics: list[str] | None = None,
    workflow=None,
    actor=None,
    **options,
) -> Experiment:
    """Create an experiment and its arms. `arms`: [{"name", "weight", "control": bool}], exactly one control."""
    experiment_authorize(actor=actor, action=ADD, workflow=workflow)
    controls = [a for a in arms if a.get("control")]
    if len(controls) != 1:
        raise ValidationError({"arms": EXACTLY_ONE_CONTROL})
    names = [a.get("name", "") for a in arms]
    for arm_name in names:
        if problem := arm_name_problem(arm_name):
            raise ValidationError({"arms": f"arm {arm_name!r}: {problem}"})
    if len(set(names)) != len(names):
        raise ValidationError({"arms": "arm names must be unique"})
    weights = {a["name"]: a.get("weight", 1.0) for a in arms}
    for arm_name, weight in weights.items():
        if problem := arm_weight_problem(weight):
            raise ValidationError({"arms": f"{arm_name}: weight {problem}"})
    if not any(weights.values()):
        raise ValidationError({"arms": NO_ACTIVE_WEIGHT})
    experiment = Experiment(
        key=key,
        name=name,
        hypothesis=hypothesis,
        holdout_share=holdout_share,
        goal_event=goal_event,
        window_s=window_s,
        mode=mode,
        secondary_metrics=secondary_metrics or [],
        workflow=workflow,
        created_by=actor if getattr(actor, "pk", None) else None,
        **options,
    )
    experiment_settings_check(experiment)
    experiment.full_clean(exclude=["winner", "salt"])
    _stamp(experiment, actor=actor, reason="created")
    experiment.save()
    for spec in arms:
        arm = Arm(
            experiment=experiment,
            name=spec["name"],
            weight=float(spec.get("weight", 1.0)),
            is_control=bool(spec.get("control")),
            description=spec.get("description", ""),
        )
        arm.full_clean(exclude=["experiment"])
        _stamp(arm, actor=actor, reason="created")
        arm.save()
    return experiment


def _locked(experiment: Experiment) -> Experiment:
    return Experiment.objects.select_for_update().get(pk=experiment.pk)


@transaction.atomic
def experiment_start(
    *, experiment: Experiment, actor=None, reason: str = "started", now: datetime | None = None
) -> Experiment:
    experiment_authorize(actor=actor)
    experiment = _locked(experiment)
    if experiment.status == ExperimentStatus.CONCLUDED:
        raise ValidationError("a concluded experiment cannot restart; create a new one")
    if experiment.control is None or experiment.arms.filter(retired_at__isnull=True).count() < 2:
        raise ValidationError("an experiment needs a control and at least one other active arm")
    now = now or timezone.now()
    experiment.status = ExperimentStatus.RUNNING
    experiment.started_at = experiment.started_at or now
    experiment.stopped_at = None
    _stamp(experiment, actor=actor, reason=reason, at=now)
    experiment.save()
    return experiment


@transaction.atomic
def experiment_stop(
    *, experiment: Experiment, actor=None, reason: str = "stopped", now: datetime | None = None
) -> Experiment:
    """Pause: new entries follow control unrecorded, customers held out stay without messages,
    customers assigned an arm follow control; recorded assignments are kept for analysis, which
    does not count conversions while it is stopped."""
    experiment_authorize(actor=actor)
    experiment = _locked(experiment)
    if experiment.status != ExperimentStatus.RUNNING:
        raise ValidationError(f"only a running experiment can stop (it is {experiment.status})")
    experiment.status = ExperimentStatus.STOPPED
    experiment.stopped_at = now or timezone.now()
    _stamp(experiment, actor=actor, reason=reason, at=experiment.stopped_at)
    experiment.save()
    return experiment


@transaction.atomic
def experiment_conclude(
    *, experiment: Experiment, winner: Arm, actor=None, reason: str, now: datetime | None = None
) -> Experiment:
    """Declare the winner: from now on every entry goes down the winner's path (the holdout's
    too); the report counts conversions up to the conclusion only."""
    experiment_authorize(actor=actor)
    experiment = _locked(experiment)
    if winner.experiment_id != experiment.pk:
        raise ValidationError({"winner": "the winner must be an arm of this experiment"})
    if winner.retired_at is not None:
        raise ValidationError({"winner": f"arm {winner.name} is retired"})
    if not reason:
        raise ValidationError({"reason": "say why this arm won (it goes into the history)"})
    experiment.status = ExperimentStatus.CONCLUDED
    experiment.winner = winner
    experiment.concluded_at = now or timezone.now()
    _stamp(experiment, actor=actor, reason=f"concluded, winner {winner.name}: {reason}", at=experiment.concluded_at)
    experiment.save()
    return experiment


@transaction.atomic
def arm_retire(*, arm: Arm, actor=None, reason: str, now: datetime | None = None) -> Arm:
    """Stop sending anyone new down an arm; customers already on it re-enter via control."""
    experiment_authorize(actor=actor)
    experiment = _locked(arm.experiment)
    arm = Arm.objects.select_for_update().get(pk=arm.pk)
    if arm.is_control:
        raise ValidationError("the control arm cannot be retired (conclude the experiment instead)")
    if arm.retired_at is not None:
        raise ValidationError(f"arm {arm.name} is already retired")
    if experiment.arms.filter(retired_at__isnull=True).exclude(pk=arm.pk).count() < 1:
        raise ValidationError("the last active arm cannot be retired")
    if not reason:
        raise ValidationError({"reason": "say why the arm is retired (it goes into the history)"})
    arm.retired_at = now or timezone.now()
    arm.retired_reason = reason[:255]
    arm.weight = 0.0
    _stamp(arm, actor=actor, reason=f"retired: {reason}")
    arm.save()
    return arm


@transaction.atomic
def experiment_set_weights(*, experiment: Experiment, weights: dict[str, float], actor=None, reason: str) -> Experiment:
    """Change arm weights. Customers already assigned keep their arm (assignments are recorded)."""
    experiment_authorize(actor=actor)
    reason = require_reason(actor, reason)
    experiment = _locked(experiment)
    arms = {a.name: a for a in experiment.arms.select_for_update()}
    unknown = set(weights) - set(arms)
    if unknown:
        raise ValidationError({"weights": f"unknown arm(s): {', '.join(sorted(unknown))}"})
    for name, weight in weights.items():
        if problem := arm_weight_problem(weight):
            raise ValidationError({"weights": f"{name}: weight {problem}"})
        if arms[name].retired_at is not None and weight > 0:
            raise ValidationError({"weights": f"{name} is retired"})
    if not any(weights.get(name, arm.weight) for name, arm in arms.items() if arm.retired_at is None):
        raise ValidationError({"weights": NO_ACTIVE_WEIGHT})
    for name, weight in weights.items():
        arm = arms[name]
        if arm.weight != weight:
            arm.weight = float(weight)
            _stamp(arm, actor=actor, reason=reason)
            arm.save(update_fields=["weight"])
    return experiment


def experiment_workflows_kept() -> set[int]:
    """HISTORY_KEEPERS entry: the workflows whose finished history the retention keeps while an
    experiment on them exists, running or concluded (its report reads their runs, steps and
    messages: a concluded one's conversions too), until the experiment is deleted: the
    experiment's workflow and every workflow with a version whose split step names it."""
    from journeys.models import Step

    experiments = Experiment.objects.all()
    kept = set(experiments.exclude(workflow=None).values_list("workflow_id", flat=True))
    keys = list(experiments.values_list("key", flat=True))
    if keys:
        kept |= set(Step.objects.filter(kind="experiment_split", config__experiment__in=keys)
                    .values_list("version__workflow_id", flat=True))
    return kept
