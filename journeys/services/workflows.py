"""Workflows and versions: build, validate, publish, copy to a new draft, export/import."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from journeys.choices import ReentryPolicy, TriggerKind, VersionState
from journeys.engine.compiled import bump_generation
from journeys.engine.cron import parse_cron
from journeys.engine.durations import parse_duration
from journeys.engine.registry import get_kind
from journeys.models import BusinessUnit, Edge, Step, Workflow, WorkflowVersion
from journeys.rules import RuleSyntaxError, compile_rule

EXPORT_FORMAT = "journey-console/workflow@1"
VERSION_FIELDS = (
    "trigger_kind", "trigger_event", "trigger_config", "entry_rule", "reentry_policy", "reentry_cooldown_s",
    "allow_concurrent_runs", "goal_event", "goal_filter", "entry_step", "notes",
)


@dataclass
class ValidationReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _rule_error(text: str, where: str) -> str | None:
    if not text:
        return None
    try:
        compile_rule(text)
    except RuleSyntaxError as exc:
        return f"{where}: {exc}"
    return None


def trigger_clean(*, kind: str, event: str, config: dict) -> dict:
    """Validate a trigger's settings; errors name the field to fix."""
    config = dict(config or {})
    if kind not in TriggerKind.values:
        raise ValidationError({"trigger_kind": f"unknown trigger kind {kind!r}"})
    if kind in (TriggerKind.EVENT, TriggerKind.INACTIVITY) and not event:
        raise ValidationError({"trigger_event": "is required for this trigger (the event name)"})
    if error := _rule_error(config.get("filter", ""), "filter"):
        raise ValidationError({"trigger_config": error})
    if kind == TriggerKind.INACTIVITY:
        if not config.get("followed_by"):
            raise ValidationError({"trigger_config": "followed_by: the event that must follow (e.g. Order Completed)"})
        try:
            parse_duration(config.get("within"), field="within")
        except ValueError as exc:
            raise ValidationError({"trigger_config": str(exc)}) from None
    elif kind == TriggerKind.ATTRIBUTE_CHANGE and not config.get("attribute"):
        raise ValidationError({"trigger_config": "attribute: the profile trait to watch"})
    elif kind == TriggerKind.SEGMENT_ENTRY:
        if not config.get("rule"):
            raise ValidationError({"trigger_config": "rule: the segment rule, e.g. profile.ltv >= 500"})
        if error := _rule_error(config["rule"], "rule"):
            raise ValidationError({"trigger_config": error})
    elif kind == TriggerKind.DATE_ATTRIBUTE:
        if not config.get("attribute"):
            raise ValidationError({"trigger_config": "attribute: the date trait, e.g. signup_date"})
        at = config.get("at", "09:00")
        if not isinstance(at, str) or len(at) != 5 or at[2] != ":" or not (at[:2] + at[3:]).isdigit():
            raise ValidationError({"trigger_config": "at: HH:MM local time"})
    elif kind == TriggerKind.SCHEDULE:
        try:
            parse_cron(config.get("cron", ""))
        except ValueError as exc:
            raise ValidationError({"trigger_config": f"cron: {exc}"}) from None
        if error := _rule_error(config.get("segment", ""), "segment"):
            raise ValidationError({"trigger_config": error})
    return config


def version_validate(*, version: WorkflowVersion) -> ValidationReport:
    """Checks before review and publishing: configs, rules, graph shape."""
    report = ValidationReport()
    steps = {s.key: s for s in version.steps.all()}
    edges = list(version.edges.select_related("source", "target"))
    try:
        trigger_clean(kind=version.trigger_kind, event=version.trigger_event, config=version.trigger_config)
    except ValidationError as exc:
        report.errors.extend(f"trigger: {m}" for msgs in exc.message_dict.values() for m in msgs)
    for text, where in ((version.entry_rule, "entry rule"), (version.goal_filter, "goal filter")):
        if error := _rule_error(text, where):
            report.errors.append(error)
    if not steps:
        report.errors.append("the version has no steps")
        return report
    if version.entry_step not in steps:
        report.errors.append(f"entry step {version.entry_step!r} is not a step of this version")
    outcomes_by_step: dict[str, list[str]] = {}
    for key, step in steps.items():
        try:
            kind = get_kind(step.kind)
            kind.clean(step.config)
            outcomes_by_step[key] = kind.outcomes(step.config)
        except ValidationError as exc:
            for name, msgs in exc.message_dict.items():
                report.errors.extend(f"step {key}: {name}: {m}" for m in msgs)
            outcomes_by_step[key] = []
    graph: dict[str, list[str]] = {k: [] for k in steps}
    for edge in edges:
        graph[edge.source.key].append(edge.target.key)
        if outcomes_by_step.get(edge.source.key) and edge.outcome not in outcomes_by_step[edge.source.key]:
            report.errors.append(
                f"step {edge.source.key}: edge outcome {edge.outcome!r} is not one of {outcomes_by_step[edge.source.key]}"
            )
    seen, stack = set(), [version.entry_step] if version.entry_step in steps else []
    while stack:
        key = stack.pop()
        if key not in seen:
            seen.add(key)
            stack.extend(graph[key])
    for key in steps:
        if key not in seen:
            report.errors.append(f"step {key} cannot be reached from the entry step")
    connected = {(e.source.key, e.outcome) for e in edges}
    for key, outcomes in outcomes_by_step.items():
        missing = [o for o in outcomes if (key, o) not in connected]
        if missing and steps[key].kind not in ("exit", "goal"):
            report.warnings.append(f"step {key}: outcome(s) {', '.join(missing)} lead nowhere (the run ends there)")
    # A cycle must pass through a waiting step, or a run could loop forever.
    waiting = {k for k, s in steps.items() if s.kind in ("delay", "wait_for_event")}
    for start in steps:
        if start in waiting:
            continue
        stack, visited = [n for n in graph[start] if n not in waiting], set()
        while stack:
            node = stack.pop()
            if node == start:
                report.errors.append(f"step {start} is on a cycle without a delay or wait")
                break
            if node not in visited:
                visited.add(node)
                stack.extend(n for n in graph[node] if n not in waiting)
    return report


@transaction.atomic
def workflow_create(*, name: str, business_unit: BusinessUnit, description: str = "", actor=None) -> Workflow:
    workflow = Workflow(name=name, business_unit=business_unit, description=description, created_by=actor)
    workflow.full_clean(exclude=["live_version"])
    workflow._change_reason = "created"
    workflow.save()
    return workflow


@transaction.atomic
def version_build(*, workflow: Workflow, definition: dict, actor=None) -> WorkflowVersion:
    """Create a draft version from a definition dict (the export format's `version`).

    The whole definition is validated first; a bad step or edge raises
    ValidationError naming it and nothing is stored.
    """
    definition = dict(definition or {})
    kind = definition.get("trigger_kind", TriggerKind.EVENT)
    config = trigger_clean(kind=kind, event=definition.get("trigger_event", ""), config=definition.get("trigger_config", {}))
    if definition.get("reentry_policy", ReentryPolicy.ONCE) not in ReentryPolicy.values:
        raise ValidationError({"reentry_policy": f"must be one of {', '.join(ReentryPolicy.values)}"})
    for key in ("entry_rule", "goal_filter"):
        if error := _rule_error(definition.get(key, ""), key):
            raise ValidationError({key: error})
    raw_steps = definition.get("steps") or []
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ValidationError({"steps": "at least one step is required"})
    cleaned_steps = []
    for i, raw in enumerate(raw_steps):
        if not isinstance(raw, dict) or not raw.get("key"):
            raise ValidationError({"steps": f"step {i + 1} needs a key"})
        step_kind = get_kind(raw.get("kind", ""))
        try:
            step_config = step_kind.clean(dict(raw.get("config") or {}))
        except ValidationError as exc:
            detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            raise ValidationError({"steps": f"step {raw['key']}: {detail}"}) from None
        cleaned_steps.append((raw, step_config))
    keys = [raw["key"] for raw, _ in cleaned_steps]
    if len(set(keys)) != len(keys):
        raise ValidationError({"steps": "step keys must be unique"})
    number = (workflow.versions.order_by("-number").values_list("number", flat=True).first() or 0) + 1
    version = WorkflowVersion(
        workflow=workflow,
        number=number,
        created_by=actor,
        trigger_kind=kind,
        trigger_event=definition.get("trigger_event", ""),
        trigger_config=config,
        entry_rule=definition.get("entry_rule", ""),
        reentry_policy=definition.get("reentry_policy", ReentryPolicy.ONCE),
        reentry_cooldown_s=int(definition.get("reentry_cooldown_s", 0) or 0),
        allow_concurrent_runs=bool(definition.get("allow_concurrent_runs", False)),
        goal_event=definition.get("goal_event", ""),
        goal_filter=definition.get("goal_filter", ""),
        entry_step=definition.get("entry_step") or keys[0],
        notes=definition.get("notes", ""),
    )
    version._change_reason = definition.get("reason") or "version created"
    version.save()
    by_key = {}
    for raw, step_config in cleaned_steps:
        step = Step.objects.create(
            version=version, key=raw["key"], kind=raw["kind"], name=raw.get("name", ""), config=step_config,
            x=int(raw.get("x", 0)), y=int(raw.get("y", 0)),
        )
        by_key[step.key] = step
    for i, raw in enumerate(definition.get("edges") or []):
        try:
            source, target = by_key[raw["from"]], by_key[raw["to"]]
        except (KeyError, TypeError):
            raise ValidationError({"edges": f"edge {i + 1}: 'from' and 'to' must name steps of this version"}) from None
        outcome = raw.get("outcome", "next")
        if outcome not in get_kind(source.kind).outcomes(source.config) and get_kind(source.kind).outcomes(source.config):
            raise ValidationError({"edges": f"edge {i + 1}: step {source.key} has no outcome {outcome!r}"})
        Edge.objects.create(version=version, source=source, outcome=outcome, target=target)
    if version.entry_step not in by_key:
        raise ValidationError({"entry_step": f"{version.entry_step!r} is not a step key"})
    return version


def version_definition(*, version: WorkflowVersion) -> dict:
    """The portable form of a version (what export writes and version_build reads)."""
    return {
        **{f: getattr(version, f) for f in VERSION_FIELDS},
        "steps": [
            {"key": s.key, "kind": s.kind, "name": s.name, "config": s.config, "x": s.x, "y": s.y}
            for s in version.steps.order_by("id")
        ],
        "edges": [
            {"from": e.source.key, "outcome": e.outcome, "to": e.target.key}
            for e in version.edges.select_related("source", "target").order_by("id")
        ],
    }


def workflow_export(*, version: WorkflowVersion) -> dict:
    workflow = version.workflow
    return {
        "format": EXPORT_FORMAT,
        "workflow": {"name": workflow.name, "description": workflow.description, "business_unit": workflow.business_unit.slug},
        "version": version_definition(version=version),
    }


@transaction.atomic
def workflow_import(*, data: dict, actor=None, name: str | None = None) -> WorkflowVersion:
    """Import an export as a new draft (of an existing workflow with that name, or a new one)."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ValidationError({"format": f"expected format {EXPORT_FORMAT!r}"})
    meta = data.get("workflow") or {}
    unit_slug = meta.get("business_unit") or "default"
    unit, _ = BusinessUnit.objects.get_or_create(slug=unit_slug, defaults={"name": unit_slug.title()})
    workflow_name = name or meta.get("name")
    if not workflow_name:
        raise ValidationError({"workflow.name": "is required"})
    workflow = Workflow.objects.filter(name=workflow_name).first() or workflow_create(
        name=workflow_name, business_unit=unit, description=meta.get("description", ""), actor=actor
    )
    return version_build(workflow=workflow, definition={**data.get("version", {}), "reason": "imported"}, actor=actor)


@transaction.atomic
def version_new_draft(*, version: WorkflowVersion, actor=None) -> WorkflowVersion:
    """Editing a frozen version means copying it into a new draft."""
    definition = version_definition(version=version)
    return version_build(workflow=version.workflow, definition={**definition, "reason": f"copied from v{version.number}"}, actor=actor)


@transaction.atomic
def version_publish(*, version: WorkflowVersion, actor=None, reason: str = "published") -> WorkflowVersion:
    """Make a version live: it is frozen, the previous live version retires, workers reload.

    Runs already in flight stay on the version they started on.
    """
    version = WorkflowVersion.objects.select_for_update().get(pk=version.pk)
    report = version_validate(version=version)
    if not report.ok:
        raise ValidationError({"__all__": report.errors})
    now = timezone.now()
    workflow = Workflow.objects.select_for_update().get(pk=version.workflow_id)
    for previous in WorkflowVersion.objects.filter(workflow=workflow, state=VersionState.LIVE).exclude(pk=version.pk):
        previous.state = VersionState.RETIRED
        previous._change_reason = f"retired by v{version.number}: {reason}"
        previous.save(update_fields=["state", "updated_at"])
    version.state = VersionState.LIVE
    version.frozen_at = version.frozen_at or now
    version.published_at = now
    version._change_reason = reason
    version.save(update_fields=["state", "frozen_at", "published_at", "updated_at"])
    workflow.live_version = version
    workflow._change_reason = f"v{version.number} live: {reason}"
    workflow.save(update_fields=["live_version", "updated_at"])
    bump_generation()
    return version


@transaction.atomic
def version_retire(*, version: WorkflowVersion, actor=None, reason: str = "retired") -> WorkflowVersion:
    version.state = VersionState.RETIRED
    version._change_reason = reason
    version.save(update_fields=["state", "updated_at"])
    Workflow.objects.filter(pk=version.workflow_id, live_version=version).update(live_version=None)
    bump_generation()
    return version


def version_check_editable(*, version: WorkflowVersion) -> None:
    """A version that has been live is immutable: raise, pointing at 'new draft'."""
    if version.is_frozen:
        raise ValidationError(
            f"v{version.number} has been live and cannot change; use 'Create a new draft from this version'"
        )
