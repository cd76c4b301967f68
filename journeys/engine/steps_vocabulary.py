"""Step kinds of the shared vocabulary: set a lifecycle stage, move to another workflow."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from journeys.engine.registry import Palette, StepKind, StepResult, register, require
from journeys.engine.steps import PROFILE
from journeys.forms import kinds as forms


@register
class SetStage(StepKind):
    kind = "set_stage"
    label = "Set lifecycle stage"
    help = "Moves the customer to a lifecycle stage (recorded with history; triggers 'Stage Entered')."
    side_effects = True
    batch_safe = True  # in an engine batch the moves are written at its flush (StageBatch)
    fields = {"stage": "stage key, e.g. at_risk"}
    form = forms.SetStageForm
    palette = PROFILE

    def summary(self, config):
        return f"to {config['stage']}" if config.get("stage") else ""

    def clean(self, config):
        from journeys.models.catalog import LifecycleStage

        stage = require(config, "stage", str, "a lifecycle stage key")
        if not LifecycleStage.objects.filter(key=stage).exists():
            raise ValidationError({"stage": f"no lifecycle stage {stage!r}"})
        return {"stage": stage}

    def execute(self, ctx):
        if ctx.dry_run:
            return StepResult(outcome="next", detail={"would_set_stage": ctx.config["stage"]})
        from journeys.services.lifecycle import customer_set_stage

        changed = customer_set_stage(customer=ctx.customer, stage=ctx.config["stage"], reason=f"workflow step {ctx.step_key}", at=ctx.now)
        return StepResult(outcome="next", detail={"stage": ctx.config["stage"], "changed": changed})


@register
class StartWorkflow(StepKind):
    kind = "start_workflow"
    label = "Start / move to another workflow"
    help = ("Enrols the customer in another workflow's live version. With exit_current the current run ends "
            "(a move, e.g. onboarding -> at-risk rescue); exit_workflows also ends open runs elsewhere. "
            "History (runs, step log, events) is kept.")
    side_effects = True
    batch_safe = True  # in an engine batch the moves are written and started at its flush (MoveBatch)
    fields = {"workflow": "name of the workflow to start", "exit_current": "true to end this run (a move)",
              "exit_workflows": "list of workflow names whose open runs end"}
    form = forms.StartWorkflowForm
    palette = Palette(group="Flow", colour="#e8eaf6", order=25)

    def summary(self, config):
        if not config.get("workflow"):
            return ""
        return ("move to " if config.get("exit_current") else "start ") + config["workflow"]

    def references(self, config):
        exits = config.get("exit_workflows") if isinstance(config.get("exit_workflows"), list) else []
        return {"workflow": {name for name in (config.get("workflow"), *exits) if isinstance(name, str) and name}}

    def clean(self, config):
        from journeys.models import Workflow

        name = require(config, "workflow", str, "a workflow name")
        if not Workflow.objects.filter(name=name).exists():
            raise ValidationError({"workflow": f"no workflow named {name!r}"})
        others = config.get("exit_workflows") or []
        if not isinstance(others, list) or not all(isinstance(o, str) for o in others):
            raise ValidationError({"exit_workflows": "must be a list of workflow names"})
        return {"workflow": name, "exit_current": bool(config.get("exit_current")), "exit_workflows": others}

    def execute(self, ctx):
        from journeys.choices import RunStatus
        from journeys.engine.compiled import load_version
        from journeys.engine.moves import MoveBatch, move_loop, move_target
        from journeys.engine.runner import run_enroll, runs_end
        from journeys.models import JourneyRun

        name = ctx.config["workflow"]
        moves = None if ctx.dry_run else MoveBatch.current()
        found = moves.target(name) if moves is not None else move_target(name)
        detail = {"workflow": name, "exit_current": ctx.config["exit_current"]}
        if found is None:  # renamed or deleted since the version was published
            return StepResult(end_status=RunStatus.FAILED, detail=detail,
                              error=f"workflow: there is no workflow named {name!r} any more (renamed or deleted?); "
                                    "publish a version of this workflow that names the one to start")
        live_version_id = found[1]
        if live_version_id is None:
            return StepResult(outcome="next", detail=detail, error=f"workflow {name!r} has no live version")
        if ctx.dry_run:
            return StepResult(end_status="exited" if ctx.config["exit_current"] else None,
                              outcome=None if ctx.config["exit_current"] else "next", detail={"would_start": name, **detail})
        if loop := move_loop(run=ctx.run, target=name, now=ctx.now):
            return StepResult(end_status=RunStatus.FAILED, detail=detail, error=loop)
        trigger_key = f"moved:{ctx.idempotency_key}"
        if moves is not None:  # written, enrolled and started with the batch's other moves at its flush
            detail["started_run"] = None
            moves.add(run=ctx.run, customer=ctx.customer, version_id=live_version_id, target=name,
                      trigger_key=trigger_key, event=ctx.event, now=ctx.now, since=ctx.since,
                      exit_workflows=ctx.config["exit_workflows"], detail=detail)
        else:
            runs_end(JourneyRun.objects.filter(customer=ctx.customer, workflow__name__in=ctx.config["exit_workflows"])
                     .exclude(pk=ctx.run.pk), status=RunStatus.EXITED, now=ctx.now, error=f"moved to {name}")
            if ctx.config["exit_current"]:
                # Close this run first so a workflow that allows one open run at a time can take the customer.
                JourneyRun.objects.filter(pk=ctx.run.pk).update(status=RunStatus.EXITED)
            run = run_enroll(version=load_version(live_version_id), customer=ctx.customer, trigger_key=trigger_key,
                             now=ctx.now, event=ctx.event, since=ctx.since)
            detail["started_run"] = run.pk if run else None
        if ctx.config["exit_current"]:
            return StepResult(end_status="exited", detail=detail)
        return StepResult(outcome="next", detail=detail)
