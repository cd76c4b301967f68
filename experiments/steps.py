"""The experiment_split step kind: sends each entrant down the arm they are assigned."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.core.exceptions import ObjectDoesNotExist, ValidationError

from experiments.choices import HOLDOUT
from experiments import step_forms as forms
from journeys.engine.registry import Palette, StepKind, StepResult, register, require
from journeys.engine.runtime import StepContext


@register
class ExperimentSplit(StepKind):
    kind = "experiment_split"
    label = "Experiment split (A/B/n, holdout)"
    help = (
        "Assigns each customer to an arm of the experiment (sticky, recorded once) and follows the arm's name. "
        "Holdout customers follow 'holdout' (wire it to the control path) or control, and get no messages. "
        "Sets journey.experiment, journey.experiment_arm and journey.holdout."
    )
    side_effects = True  # records the assignment (idempotent: one row per customer)
    batch_safe = True  # in an engine batch the assignments are recorded with one INSERT (AssignmentBatch)
    fields = {
        "experiment": "experiment key",
        "arms": "optional: the arm names this step offers (default: all arms of the experiment)",
    }

    form = forms.ExperimentSplitForm
    palette = Palette(group="Experiments", colour="#fff8e1", order=30)

    def outcomes(self, config):
        return list(config.get("arms", [])) + ([HOLDOUT] if config.get("holdout") else [])

    def summary(self, config):
        return config.get("experiment", "") + (f" ({', '.join(config['arms'])})" if config.get("arms") else "")

    def clean(self, config):
        from experiments.models import Experiment

        key = require(config, "experiment", str, "an experiment key")
        experiment = Experiment.objects.filter(key=key).first()
        if experiment is None:
            raise ValidationError({"experiment": f"no experiment with key {key!r}"})
        names = [a.name for a in experiment.arms.all()]
        arms = config.get("arms") or names
        if not isinstance(arms, list) or any(a not in names for a in arms):
            raise ValidationError({"arms": f"must be a list of arms of {key}: {', '.join(names)}"})
        control = experiment.control
        if control is None or control.name not in arms:
            raise ValidationError({"arms": "the control arm must be one of the step's arms"})
        holdout = bool(config.get("holdout", experiment.holdout_share > 0))
        return {"experiment": key, "arms": list(arms), "holdout": holdout, "control": control.name}

    def execute(self, ctx: StepContext) -> StepResult:
        from experiments.models import Experiment
        from experiments.services.assignment import AssignmentBatch, assignment_decide

        config = ctx.config
        batch = None if ctx.dry_run else AssignmentBatch.current()
        if batch is not None:
            experiment = batch.experiment(config["experiment"])
        else:
            experiment = Experiment.objects.filter(key=config["experiment"]).first()
        if experiment is None:
            return StepResult(outcome=config["control"], error=f"experiment {config['experiment']} is gone: control")
        if batch is not None:
            decision = batch.decide(experiment=experiment, customer=ctx.customer, now=entry_moment(ctx, experiment),
                                    arm_names=config["arms"], run_id=ctx.run.pk, version_id=ctx.version_id)
        else:
            decision = assignment_decide(
                experiment=experiment,
                customer=ctx.customer,
                now=entry_moment(ctx, experiment),
                arm_names=config["arms"],
                run_id=None if ctx.dry_run else ctx.run.pk,
                version_id=ctx.version_id,
                dry_run=ctx.dry_run,
            )
        edges = _edges(ctx)
        if decision.holdout:
            outcome = HOLDOUT if HOLDOUT in edges or edges is None and config.get("holdout") else config["control"]
        else:
            outcome = decision.arm.name
            if edges is not None and outcome not in edges:  # an arm this version does not offer
                outcome = config["control"]
        ctx.run.variables = {
            **ctx.run.variables,
            "experiment": experiment.pk,
            "experiment_arm": decision.arm.name,
            "holdout": decision.holdout,
        }
        detail = {
            "experiment": experiment.key,
            "arm": decision.arm.name,
            "holdout": decision.holdout,
            "reason": decision.reason,
            "recorded": decision.recorded,
        }
        if decision.scores:
            detail["scores"] = decision.scores
        return StepResult(outcome=outcome, detail=detail)


SAME_PASS = timedelta(minutes=1)  # a run created this long before the split is still in its enrolling pass
AFTER_TRIGGER = timedelta(microseconds=1)  # the entry: just after its trigger (goals are `timestamp >= entry`)


def entry_moment(ctx: StepContext, experiment) -> datetime:
    """When the customer entered the experiment: the moment its conversion window opens. A split
    reached in the pass that enrolled the run (no wait before it) dates from just after the trigger
    event happened (a batching SDK, a mobile batch delivered late, a queue that lagged: a goal event
    sent seconds after the trigger must count, though both are processed together), never before
    the experiment started; the trigger itself is not after it, so a goal event of the trigger's
    own name does not convert on the trigger. Later in a journey (after a wait), now."""
    event, run = ctx.event, ctx.run
    happened = getattr(event, "timestamp", None) if event is not None else None
    created = getattr(run, "created_at", None)
    if (happened is None or created is None or getattr(run, "trigger_event_id", None) != getattr(event, "pk", None)
            or ctx.now - created > SAME_PASS):
        return ctx.now
    moment = min(happened + AFTER_TRIGGER, ctx.now)
    return max(moment, experiment.started_at) if experiment.started_at else moment


def _edges(ctx: StepContext) -> dict | None:
    """The outcomes wired from this step in the running version (None if unknown)."""
    from journeys.engine.compiled import load_version

    try:
        return load_version(ctx.version_id).steps[ctx.step_key].edges
    except (KeyError, ObjectDoesNotExist):  # a stand-in version in a dry run
        return None
