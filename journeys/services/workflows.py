"""Workflows and versions: build, validate, export/import, and the governed lifecycle.

draft -> in review (a change request) -> approved -> [canary: a share of new entries] -> live -> retired.
Every operation takes the acting user (`actor=None` is the system: demo data, imports by
operators on the command line, tests), re-checks the actor's rights itself, and records
who, when and why in the audit log inside its own transaction.

One file (about 870 lines) because the lifecycle is one state machine: every transition locks
the same rows (`version_lock`: the workflow's row, then the version's), checks the same states (`EDITABLE_STATES`,
`version_check_editable`) and ends in the same audit record, and validation (at the top) is
what proposing and publishing require. Editing a draft step by step (the canvas) is apart, in
`journeys.services.drafts`; a version's portable definition in `journeys.services.definitions`.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from journeys.choices import ReentryPolicy, TriggerKind, VersionState
from journeys.engine.business_hours import BusinessHoursError, business_hours_clean
from journeys.engine.compiled import bump_generation
from journeys.engine.cron import parse_cron
from journeys.engine.dates import DateRule
from journeys.engine.durations import parse_duration
from journeys.engine.registry import STEP_KINDS, get_kind
from journeys.errors import DraftChanged, JourneyError, PermissionDenied
from journeys.models import AuditEntry, BusinessUnit, ChangeRequest, ChangeRequestStatus, Edge, Step, Workflow, WorkflowVersion
from journeys.rules import validate_profile_rule, validate_rule
from journeys.selectors import EDIT, PROPOSE, PUBLISH, REVIEW, VIEW, business_units_for_user, user_can
from journeys.services.definitions import (
    MAX_COORDINATE,
    VERSION_FIELDS,
    definition_read,
    version_definition,
    workflow_meta_read,
)
from journeys.services.governance import (
    audit_record,
    history_stamp,
    require,
    require_reason,
    unknown_attribute_warnings,
    version_diff,
    version_fingerprint,
    version_replay,
)
from journeys.services.references import config_rename_check
from journeys.services.stale_edits import DELETED_SINCE, edit_refuse_stale, fields_token
from journeys.timezones import zone_check

EXPORT_FORMAT = "journey-console/workflow@1"


@dataclass
class ValidationReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _rule_error(text: str, where: str, *, profile_only: bool = False) -> str | None:
    """Why the rule setting `where` is refused, or None. `profile_only`: a rule read from each customer's
    profile with no event (a segment), which may only read profile.*."""
    if not text:
        return None
    if not isinstance(text, str):
        return f"{where}: a rule is written as text, e.g. profile.ltv >= 500"
    problems = (validate_profile_rule if profile_only else validate_rule)(text)
    return f"{where}: {problems[0]}" if problems else None


TRIGGER_CONFIG_NOT_OBJECT = ("must be a JSON object of the trigger's settings, e.g. "
                             '{"filter": "event.properties.total > 50"} ({} for none)')
TRIGGER_TEXT_EXAMPLES = {"followed_by": "Order Completed", "attribute": "signup_date", "cron": "0 9 * * 1"}
# The settings each kind of trigger reads. Other keys are kept as they are (notes, settings of
# other tools), except one another kind reads or one that is a near miss of this kind's.
TRIGGER_SETTINGS = {
    TriggerKind.EVENT: ("filter",),
    TriggerKind.INACTIVITY: ("followed_by", "within", "filter"),
    TriggerKind.ATTRIBUTE_CHANGE: ("attribute", "from", "to"),
    TriggerKind.SEGMENT_ENTRY: ("rule",),
    TriggerKind.DATE_ATTRIBUTE: ("attribute", "at", "offset_days", "yearly"),
    TriggerKind.SCHEDULE: ("cron", "segment", "timezone"),
}
# A schedule's `tz` would be kept and ignored while the broadcast goes out on UTC: the usual
# spellings of `timezone` are refused where a kind reads it (other unknown keys are kept).
ZONE_SPELLINGS = ("tz", "time_zone", "timezone", "zone", "time zone", "time-zone")


def _setting_error(kind: str, name: str) -> str | None:
    """Why a trigger of `kind` refuses the setting `name`: another kind's, or a misspelling of its own."""
    own = TRIGGER_SETTINGS.get(kind, ())
    if name in own:
        return None
    label = kind.replace("_", " ")
    readers = [str(k).replace("_", " ") for k, names in TRIGGER_SETTINGS.items() if name in names]
    if readers:
        return (f"{name}: is a setting of {' and '.join(readers)} triggers; the {label} trigger does not read it "
                f"(it reads {', '.join(own) or 'none'}): remove it")
    if "timezone" in own and name.strip().lower() in ZONE_SPELLINGS:  # tz, timeZone, Timezone ...
        return f"{name}: the {label} trigger has no such setting; did you mean 'timezone'?"
    if close := difflib.get_close_matches(name, own, n=1, cutoff=0.75):
        return f"{name}: the {label} trigger has no such setting; did you mean {close[0]!r}?"
    return None


def trigger_clean(*, kind: str, event: str, config: dict) -> dict:
    """Validate a trigger's settings; errors name the field to fix."""
    if config is not None and not isinstance(config, dict):
        raise ValidationError({"trigger_config": TRIGGER_CONFIG_NOT_OBJECT})
    config = dict(config or {})
    for name in ("followed_by", "attribute", "cron"):
        if not isinstance(config.get(name, ""), str):
            raise ValidationError({"trigger_config": f"{name}: must be text, e.g. {TRIGGER_TEXT_EXAMPLES[name]}"})
    if kind not in TriggerKind.values:
        raise ValidationError({"trigger_kind": f"unknown trigger kind {kind!r}"})
    for name in config:
        if error := _setting_error(kind, name):
            raise ValidationError({"trigger_config": error})
    if kind in (TriggerKind.EVENT, TriggerKind.INACTIVITY) and not event:
        raise ValidationError({"trigger_event": "is required for this trigger (the event name)"})
    if error := _rule_error(config.get("filter", ""), "filter"):
        raise ValidationError({"trigger_config": error})
    if kind == TriggerKind.INACTIVITY:
        if not config.get("followed_by"):
            raise ValidationError({"trigger_config": "followed_by: the event that must follow (e.g. Order Completed)"})
        try:
            window = parse_duration(config.get("within"), field="within")
        except ValueError as exc:
            raise ValidationError({"trigger_config": str(exc)}) from None
        if not window:  # nobody could act in time: every start would count as inactive at once
            raise ValidationError({"trigger_config": f"within: {config.get('within')!r} is no time at all; give the "
                                                     "window in which the event must follow, e.g. 1h or 2d"})
    elif kind == TriggerKind.ATTRIBUTE_CHANGE and not config.get("attribute"):
        raise ValidationError({"trigger_config": "attribute: the profile trait to watch"})
    elif kind == TriggerKind.SEGMENT_ENTRY:
        if not config.get("rule"):
            raise ValidationError({"trigger_config": "rule: the segment rule, e.g. profile.ltv >= 500"})
        if error := _rule_error(config["rule"], "rule", profile_only=True):
            raise ValidationError({"trigger_config": error})
    elif kind == TriggerKind.DATE_ATTRIBUTE:
        if not config.get("attribute"):
            raise ValidationError({"trigger_config": "attribute: the date trait, e.g. signup_date"})
        try:
            DateRule.of(config)
        except ValueError as exc:
            raise ValidationError({"trigger_config": str(exc)}) from None
    elif kind == TriggerKind.SCHEDULE:
        try:
            parse_cron(config.get("cron", ""))
        except ValueError as exc:
            raise ValidationError({"trigger_config": f"cron: {exc}"}) from None
        if error := _rule_error(config.get("segment", ""), "segment", profile_only=True):
            raise ValidationError({"trigger_config": error})
        if config.get("timezone") not in (None, ""):  # the cron's wall clock; none: UTC
            try:
                config["timezone"] = zone_check(config["timezone"], field="timezone")
            except JourneyError as exc:
                raise ValidationError({"trigger_config": str(exc)}) from None
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
            try:  # its outcomes as far as they can be read: those without an edge are still worth saying
                outcomes_by_step[key] = kind.outcomes(step.config or {}) if step.kind in STEP_KINDS else []
            except (ValidationError, LookupError, TypeError, ValueError):
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
    targets = {edge.target.key for edge in edges}
    for key in steps:
        if key not in seen:
            orphaned = ": no edge leads to it (orphaned)" if key not in targets else ""
            report.errors.append(f"step {key} cannot be reached from the entry step{orphaned}")
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
    report.errors.extend(_move_loops(version=version, steps=steps))
    report.warnings.extend(unknown_attribute_warnings(version=version))
    return report


@dataclass(frozen=True)
class LiveMove:
    """A start_workflow step of a live version: which workflows it starts and ends, by name."""

    workflow: str  # the workflow whose live version holds the step
    number: int
    step_key: str
    target: str
    exits: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.workflow!r} v{self.number} (step {self.step_key})"


def live_moves() -> list[LiveMove]:
    """The start_workflow steps of every live version (one query): what names workflows at run time."""
    found = []
    for workflow, number, key, config in Step.objects.filter(
            kind="start_workflow", version__state=VersionState.LIVE).order_by("version__workflow__name", "key").values_list(
            "version__workflow__name", "version__number", "key", "config"):
        config = config if isinstance(config, dict) else {}
        exits = config.get("exit_workflows") if isinstance(config.get("exit_workflows"), list) else []
        found.append(LiveMove(workflow=workflow, number=number, step_key=key, target=str(config.get("workflow") or ""),
                              exits=tuple(str(e) for e in exits)))
    return found


def _move_loops(*, version: WorkflowVersion, steps: dict[str, Step]) -> list[str]:
    """The start_workflow steps of `version` that would move a customer round a loop: to this
    workflow itself, or to a workflow whose live version moves them on, and on, back to this one
    (a run would start the next at once, each sending its messages, without end)."""
    own = version.workflow.name
    mine = {key: step.config.get("workflow") for key, step in steps.items()
            if step.kind == "start_workflow" and isinstance(step.config, dict)}
    if not mine:
        return []
    onward: dict[str, list[str]] = defaultdict(list)  # workflow -> whom its live version starts
    for move in live_moves():
        if move.workflow != own:  # this workflow's own live version is what `version` replaces
            onward[move.workflow].append(move.target)
    errors = []
    for key, target in mine.items():
        if target == own:
            errors.append(f"step {key}: workflow: {own!r} is this workflow: the step would start it again at once, "
                          "and again from there, without end; start another workflow")
            continue
        came_from, queue = {target: None}, [target]
        while queue and own not in came_from:
            name = queue.pop(0)
            for nxt in onward.get(name, ()):
                if nxt not in came_from:
                    came_from[nxt] = name
                    queue.append(nxt)
        if own in came_from:
            path, name = [own], came_from[own]
            while name is not None:
                path.insert(0, name)
                name = came_from[name]
            errors.append(f"step {key}: workflow: moving to {target!r} makes a loop through the live versions: "
                          f"{' -> '.join([own, *path])}; a customer would go round it without end: "
                          "remove one of these moves")
    return errors


@transaction.atomic
def workflow_create(*, name: str, business_unit: BusinessUnit, description: str = "", actor=None,
                    reason: str = "created") -> Workflow:
    if actor is not None and not business_units_for_user(actor, EDIT).filter(pk=business_unit.pk).exists():
        raise PermissionDenied(f"{actor} may not create workflows for {business_unit}")
    workflow = Workflow(name=name, business_unit=business_unit, description=description, created_by=actor)
    workflow.full_clean(exclude=["live_version", "canary_version"])
    workflow._change_reason = reason or "created"
    workflow.save()
    audit_record(action="workflow_created", actor=actor, workflow=workflow, reason=reason)
    return workflow


@transaction.atomic
def version_build(*, workflow: Workflow, definition: dict, actor=None, lenient: bool = False,
                  copied_from: WorkflowVersion | None = None) -> WorkflowVersion:
    """Create a draft version from a definition dict (the export format's `version`).

    The whole definition is validated first; a bad value raises ValidationError naming its path
    in the document (`steps[0].config.rule`, `edges[1].to`) and nothing is stored. `lenient`
    (a copy of a stored version): a trigger or step setting that today's checks refuse is copied
    as it is, for the draft's validation report to name, instead of refusing the copy.
    `copied_from`: the version the definition is a copy of; when it never went live, who wrote it
    wrote this draft's content too (`version_authors`: four eyes hold across copies).
    """
    require(actor, EDIT, workflow)
    reason = definition.get("reason") if isinstance(definition, dict) else None
    definition = definition_read(definition)
    kind = definition["trigger_kind"] or TriggerKind.EVENT
    try:
        config = trigger_clean(kind=kind, event=definition["trigger_event"], config=definition["trigger_config"])
    except ValidationError:
        if not lenient:
            raise
        config = definition["trigger_config"]
    policy = definition["reentry_policy"] or ReentryPolicy.ONCE
    if policy not in ReentryPolicy.values:
        raise ValidationError({"reentry_policy": f"must be one of {', '.join(ReentryPolicy.values)}"})
    for key in ("entry_rule", "goal_filter"):
        if error := _rule_error(definition[key], key):
            raise ValidationError({key: error})
    try:
        business_hours = business_hours_clean(definition["business_hours"])
    except BusinessHoursError as exc:
        raise ValidationError({"business_hours": str(exc)}) from None
    if not definition["steps"]:
        raise ValidationError({"steps": "at least one step is required"})
    seen: set[str] = set()
    for i, raw in enumerate(definition["steps"]):
        if raw["key"] in seen:
            raise ValidationError({f"steps[{i}].key": f"another step already has the key {raw['key']!r}"})
        seen.add(raw["key"])
        try:
            step_kind = get_kind(raw["kind"])
        except ValidationError as exc:
            raise ValidationError({f"steps[{i}].kind": exc.message_dict["kind"]}) from None
        try:
            raw["config"] = step_kind.clean(dict(raw["config"]))
        except ValidationError as exc:
            if lenient:
                continue
            raise ValidationError({f"steps[{i}].config" + ("" if name == "__all__" else f".{name}"): messages
                                   for name, messages in exc.message_dict.items()}) from None
    entry_step = definition["entry_step"] or definition["steps"][0]["key"]
    if entry_step not in seen:
        raise ValidationError({"entry_step": f"{entry_step!r} is not a step key; the steps: {', '.join(sorted(seen))}"})
    _lock_workflow(workflow.pk)  # two new drafts at once: the second reads the number the first took
    number = (workflow.versions.order_by("-number").values_list("number", flat=True).first() or 0) + 1
    version = WorkflowVersion(
        workflow=workflow, number=number, created_by=actor, trigger_kind=kind,
        trigger_event=definition["trigger_event"], trigger_config=config, entry_rule=definition["entry_rule"],
        reentry_policy=policy, reentry_cooldown_s=definition["reentry_cooldown_s"],
        allow_concurrent_runs=definition["allow_concurrent_runs"], goal_event=definition["goal_event"],
        goal_filter=definition["goal_filter"], entry_step=entry_step, business_hours=business_hours,
        notes=definition["notes"],
    )
    version._change_reason = reason or "version created"
    try:
        with transaction.atomic():
            version.save()
    except IntegrityError:  # a writer that took no lock (SQLite reads before it writes)
        raise ValidationError(f"another version v{number} of {workflow} was created at the same moment: nothing was "
                              "created; try again") from None
    by_key = {}
    for raw in definition["steps"]:
        by_key[raw["key"]] = Step.objects.create(version=version, key=raw["key"], kind=raw["kind"], name=raw["name"],
                                                 config=raw["config"], x=raw["x"], y=raw["y"])
    for i, raw in enumerate(definition["edges"]):
        for end in ("from", "to"):
            if raw[end] not in by_key:
                raise ValidationError({f"edges[{i}].{end}": f"{raw[end]!r} is not a step of this version; the steps: "
                                                            f"{', '.join(sorted(by_key))}"})
        source, outcome = by_key[raw["from"]], raw["outcome"]
        outcomes = get_kind(source.kind).outcomes(source.config)
        if outcomes and outcome not in outcomes:
            raise ValidationError({f"edges[{i}].outcome": f"step {source.key} has no outcome {outcome!r}; its "
                                                          f"outcomes: {', '.join(outcomes)}"})
        Edge.objects.create(version=version, source=source, outcome=outcome, target=by_key[raw["to"]])
    copied = {}
    if copied_from is not None:
        copied["copied_from"] = copied_from.number
        if copied_from.published_at is None:  # its content was never reviewed into a live version
            copied["content_authors"] = sorted(version_authors(version=copied_from))
    audit_record(action="version_created", actor=actor, version=version, reason=version._change_reason, data=copied)
    return version


def workflow_export(*, version: WorkflowVersion) -> dict:
    workflow = version.workflow
    return {
        "format": EXPORT_FORMAT,
        "workflow": {"name": workflow.name, "description": workflow.description, "business_unit": workflow.business_unit.slug},
        "version": version_definition(version=version),
    }


NAME_IN_USE = "the workflow name {name!r} is in use: import under another name"


@transaction.atomic
def workflow_import(*, data: dict, actor=None, name: str | None = None) -> WorkflowVersion:
    """Import an export as a new draft (of an existing workflow with that name, or a new one).
    A name taken by a workflow the actor may not see is refused as a name in use, as creating a
    workflow under it would be: the answer never tells whose it is."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ValidationError({"format": f"expected format {EXPORT_FORMAT!r}"})
    meta = workflow_meta_read(data.get("workflow"))
    version = data.get("version")
    if not isinstance(version, dict):  # read before anything is created, like the workflow's part
        raise ValidationError({"version": "must be a JSON object (the version's settings, steps and edges)"})
    unit_slug = meta["business_unit"] or "default"
    unit, _ = BusinessUnit.objects.get_or_create(slug=unit_slug, defaults={"name": unit_slug.title()})
    workflow_name = name or meta["name"]
    if not workflow_name:
        raise ValidationError({"workflow.name": "is required"})
    workflow = Workflow.objects.filter(name=workflow_name).first()
    if workflow is not None and actor is not None and not user_can(actor, VIEW, workflow):
        # Said as the workflow form says a name in use: nothing about whose workflow it is.
        raise ValidationError({"name": NAME_IN_USE.format(name=workflow_name)})
    workflow = workflow or workflow_create(
        name=workflow_name, business_unit=unit, description=meta["description"], actor=actor
    )
    return version_build(workflow=workflow, definition={**version, "reason": "imported"}, actor=actor)


# --------------------------------------------------------------------------- the governed lifecycle

EDITABLE_STATES = (VersionState.DRAFT, VersionState.IN_REVIEW, VersionState.APPROVED)


# Lock order, everywhere: the workflow row first, then its version rows (no deadlocks on PostgreSQL
# between a publish and a rollback of the same workflow, or a publish and an edit of the version:
# an edit that locked only the version would wait at COMMIT for the workflow's row, which the
# publish holds while it waits for the version's row).
def version_lock(version: WorkflowVersion) -> WorkflowVersion:
    """The version's row locked for this transaction, its workflow's row locked before it (every
    edit and every lifecycle step of a version goes through here). `.workflow` is the locked row."""
    workflow = _lock_workflow(version.workflow_id)
    locked = WorkflowVersion.objects.select_for_update(of=("self",)).get(pk=version.pk)
    locked.workflow = workflow
    return locked


def _lock_workflow(workflow_id: int) -> Workflow:
    return Workflow.objects.select_for_update().get(pk=workflow_id)


def _open_request(version: WorkflowVersion) -> ChangeRequest | None:
    return (ChangeRequest.objects.filter(version=version, status__in=[ChangeRequestStatus.OPEN,
                                                                      ChangeRequestStatus.APPROVED])
            .order_by("-created_at", "-id").first())


def _save(obj, reason: str, fields: list[str]) -> None:
    obj._change_reason = reason
    obj.save(update_fields=[*fields, "updated_at"])


@transaction.atomic
def version_new_draft(*, version: WorkflowVersion, actor=None, reason: str = "") -> WorkflowVersion:
    """Editing a frozen version means copying it into a new draft."""
    require(actor, EDIT, version.workflow)
    definition = version_definition(version=version)
    for step in definition.get("steps", []):  # a position stored before the canvas bounded them
        for axis in ("x", "y"):
            if isinstance(step.get(axis), int):
                step[axis] = max(-MAX_COORDINATE, min(MAX_COORDINATE, step[axis]))
    return version_build(workflow=version.workflow, actor=actor, lenient=True, copied_from=version,
                         definition={**definition, "reason": reason or f"copied from v{version.number}"})


# What a person edits on a version's page: how it behaves, and its notes. Where it stands
# (workflow, number) and its lifecycle stamps (state, frozen, published, approved) belong to the
# governed operations below, which lock the row to change them.
VERSION_EDITABLE_FIELDS = (*VERSION_FIELDS, "business_hours")
CHANGED_MEANWHILE = ("v{number} changed by someone else meanwhile (it is now {stage}): reload the page; "
                     "nothing was saved")
SAVED_MEANWHILE = ("v{number} was changed by {who} since you opened this page: nothing was saved, so that their "
                   "change is not undone. Reload the page to see it, then make your change again (what you typed "
                   "is still in this form)")


RETURNED_TO_REVIEW = ("v{number} was approved; this change sent it back to review: it needs a new approval before "
                      "it can be published")


def version_stage(version: WorkflowVersion) -> str:
    """Where a version stands, in words: its state, or "canary" while it takes a share."""
    return "canary" if version.is_canary else version.get_state_display().lower()


def _editable(version: WorkflowVersion) -> bool:
    return not version.is_frozen and version.state in EDITABLE_STATES and not version.is_canary


def version_token(*, version: WorkflowVersion) -> str:
    """What a version's page was opened with, for `version_save(loaded=...)`: the version's last
    change (`updated_at`), which every save of its settings, every edit of its steps or edges
    (`version_note_changed`) and every lifecycle step moves."""
    return version.updated_at.isoformat()


def _claim_unchanged(version: WorkflowVersion, loaded: str) -> bool:
    """Compare and set, in the database: move the version's `updated_at` only where it still is
    what the page was opened with (`UPDATE ... WHERE id = %s AND updated_at = %s`). Of two saves
    from pages opened alike, the second's UPDATE waits for the first's row lock and then finds
    the stamp moved: 0 rows."""
    try:
        stamp = datetime.fromisoformat(loaded)
    except (TypeError, ValueError):
        return False
    return WorkflowVersion.objects.filter(pk=version.pk, updated_at=stamp).update(updated_at=timezone.now()) == 1


def _last_changed_by(version: WorkflowVersion) -> str:
    entry = AuditEntry.objects.filter(version=version).select_related("actor").order_by("-at", "-id").first()
    return str(entry.actor) if entry is not None and entry.actor is not None else "someone else"


@transaction.atomic
def version_save(*, version: WorkflowVersion, actor=None, reason: str = "", loaded: str | None = None) -> WorkflowVersion:
    """Save the settings edited on an existing version's page (`version` carries the edited values,
    over what was read when the page was posted). Record the edit with `version_note_changed`
    once its steps and edges are saved too.

    The stored row is locked and checked again: a version published, staged or retired since it
    was read is refused ("changed by someone else meanwhile") rather than unfrozen by a write of
    the stale copy, and only the editable settings are written; a version never moves to another
    workflow or number (its approval was given there). `loaded` (`version_token` of the version
    the page showed): a version changed since then, by another editor or another tab, is not
    written over (`DraftChanged`, nothing saved), or the first editor's change would be lost
    unseen."""
    current = version_lock(version)
    if (version.workflow_id, version.number) != (current.workflow_id, current.number):
        raise ValidationError("a version stays in its workflow under its number (its review and approval were "
                              "given there); create a new draft instead")
    if not _editable(version):
        version_check_editable(version=version, actor=actor)
    if not _editable(current):
        raise ValidationError(CHANGED_MEANWHILE.format(number=current.number, stage=version_stage(current)),
                              code="changed_meanwhile")
    require(actor, EDIT, current.workflow)
    reason = require_reason(actor, reason)
    if loaded is not None and not _claim_unchanged(current, loaded):
        raise DraftChanged(SAVED_MEANWHILE.format(number=current.number, who=_last_changed_by(current)),
                           code="changed_meanwhile")
    for name in VERSION_EDITABLE_FIELDS:
        setattr(current, name, getattr(version, name))
    history_stamp(current, actor=actor, reason=reason or "edited")
    current.save(update_fields=[*VERSION_EDITABLE_FIELDS, "updated_at"])
    return current


def version_check_editable(*, version: WorkflowVersion, actor=None) -> None:
    """A version that has been live (or canary) is immutable: raise, pointing at 'new draft'.
    With an actor, also refuse people who may not edit this workflow."""
    if version.is_frozen or version.state not in EDITABLE_STATES:
        raise ValidationError(
            f"v{version.number} has been live and cannot change; use 'Create a new draft from this version'"
        )
    require(actor, EDIT, version.workflow)


@transaction.atomic
def version_note_changed(*, version: WorkflowVersion, actor=None, reason: str = "") -> WorkflowVersion:
    """Record an edit of a version's settings, steps or edges (the admin calls it after saving).

    The editor becomes one of the version's authors (`version_authors`), who may not approve it.
    Any change after approval sends the version back to review: the approval was for other content.
    The actor's scope is re-checked inside the transaction, so an edit outside it rolls back.
    """
    version = version_lock(version)
    version_check_editable(version=version, actor=actor)
    reason = require_reason(actor, reason)
    fingerprint = version_fingerprint(version=version)
    back_to_review = version.state == VersionState.APPROVED and fingerprint != version.approved_fingerprint
    if back_to_review:
        if version.is_canary:
            raise ValidationError("a canary version cannot change; stop the canary or create a new draft")
        version.state = VersionState.IN_REVIEW
        version.approved_fingerprint, version.approved_at, version.approved_by = "", None, None
        _save(version, f"changed after approval, back to review: {reason}",
              ["state", "approved_fingerprint", "approved_at", "approved_by"])
    request = _open_request(version)
    if request is not None and back_to_review:
        request.status, request.decided_at, request.decided_by = ChangeRequestStatus.OPEN, None, None
        request.save(update_fields=["status", "decided_at", "decided_by"])
    if request is not None and version.state == VersionState.IN_REVIEW and request.fingerprint != fingerprint:
        # The reviewer must judge what is there now: refresh the reports of the open request.
        analysis = change_request_analyse(version=version, baseline=version.workflow.live_version)
        request.validation, request.dry_run, request.fingerprint = analysis["validation"], analysis["dry_run"], fingerprint
        request.save(update_fields=["validation", "dry_run", "fingerprint"])
    version.updated_at = timezone.now()  # a page opened before this edit may not save over it (version_save)
    WorkflowVersion.objects.filter(pk=version.pk).update(updated_at=version.updated_at)
    audit_record(action="version_edited", actor=actor, version=version, change_request=request,
                 reason=reason, data={"state": version.state, "fingerprint": fingerprint})
    if back_to_review:
        audit_record(action="returned_to_review", actor=actor, version=version, change_request=request,
                     reason=reason, data={"fingerprint": fingerprint})
    return version


# What makes someone an author of a version, in the audit log: who built it (a new draft, a copy,
# an import), changed it through any edit path (all of them end in `version_note_changed`) or proposed it;
# and, for a copy of a version that never went live, the authors of that version (the `content_authors`
# its `version_created` row names).
AUTHORING_ACTIONS = ("version_created", "version_edited", "proposed")


def version_authors(*, version: WorkflowVersion) -> set[int]:
    """The ids of the people who wrote this version, at any time of its life (four eyes: none of
    them may approve it). An edit made while the version is in review makes its editor an author
    as much as one made in the draft, and so does one made in an unpublished draft this one was
    copied from (copying a draft does not launder who wrote it)."""
    authors: set[int] = set()
    for actor_id, data in AuditEntry.objects.filter(version=version, action__in=AUTHORING_ACTIONS).values_list(
            "actor_id", "data"):
        if actor_id is not None:
            authors.add(actor_id)
        if isinstance(data, dict) and isinstance(data.get("content_authors"), list):
            authors.update(a for a in data["content_authors"] if isinstance(a, int))
    authors.update(ChangeRequest.objects.filter(version=version, proposed_by__isnull=False)
                   .values_list("proposed_by_id", flat=True))
    if version.created_by_id:
        authors.add(version.created_by_id)
    return authors


def change_request_analyse(*, version: WorkflowVersion, baseline: WorkflowVersion | None) -> dict:
    """What a reviewer needs besides the diff: the validation report and the dry-run replay."""
    report = version_validate(version=version)
    return {
        "validation": {"errors": report.errors, "warnings": report.warnings},
        # The replay runs the version's rules: only a valid version can be replayed.
        "dry_run": version_replay(proposed=version, baseline=baseline) if report.ok else
        {"skipped": "the version has validation errors; it is replayed once they are fixed"},
    }


@transaction.atomic
def version_submit(*, version: WorkflowVersion, actor=None, summary: str = "") -> ChangeRequest:
    """An editor proposes a draft: validation must pass; a change request opens with the reports."""
    version = version_lock(version)
    require(actor, PROPOSE, version.workflow)
    summary = require_reason(actor, summary, "summary") or f"v{version.number} proposed"
    if version.state != VersionState.DRAFT or version.is_frozen:
        raise ValidationError(f"only drafts can be proposed; v{version.number} is {version.state}")
    baseline = version.workflow.live_version
    analysis = change_request_analyse(version=version, baseline=baseline)
    if analysis["validation"]["errors"]:
        raise ValidationError({"__all__": analysis["validation"]["errors"]})
    version.state = VersionState.IN_REVIEW
    version.submitted_at = timezone.now()
    _save(version, f"proposed: {summary}", ["state", "submitted_at"])
    request = ChangeRequest.objects.create(
        workflow=version.workflow, version=version, base_version=baseline, summary=summary, proposed_by=actor,
        fingerprint=version_fingerprint(version=version), **analysis,
    )
    audit_record(action="proposed", actor=actor, version=version, change_request=request, reason=summary,
                 data={"errors": 0, "warnings": len(analysis["validation"]["warnings"]),
                       "dry_run_differs": analysis["dry_run"]["differs"]})
    return request


@transaction.atomic
def change_request_refresh(*, change_request: ChangeRequest, actor=None) -> ChangeRequest:
    """Re-run validation and the dry-run replay against the current live version."""
    if actor is not None and not user_can(actor, REVIEW, change_request.workflow):
        require(actor, PROPOSE, change_request.workflow)
    version = version_lock(change_request.version)
    request = ChangeRequest.objects.select_for_update().get(pk=change_request.pk)
    rebased = request.base_version_id != version.workflow.live_version_id
    request.base_version = version.workflow.live_version
    analysis = change_request_analyse(version=version, baseline=request.base_version)
    request.validation, request.dry_run = analysis["validation"], analysis["dry_run"]
    request.fingerprint = version_fingerprint(version=version)
    fields = ["base_version", "validation", "dry_run", "fingerprint"]
    back_to_review = rebased and version.state == VersionState.APPROVED and not version.is_frozen
    if back_to_review:  # approved as a change to another base: the new diff needs its own approval
        version.state = VersionState.IN_REVIEW
        version.approved_fingerprint, version.approved_at, version.approved_by = "", None, None
        _save(version, f"compared with {_numbered(request.base_version)} now: back to review",
              ["state", "approved_fingerprint", "approved_at", "approved_by"])
        request.status, request.decided_at, request.decided_by = ChangeRequestStatus.OPEN, None, None
        fields += ["status", "decided_at", "decided_by"]
    request.save(update_fields=fields)
    audit_record(action="reports_refreshed", actor=actor, version=version, change_request=request)
    if back_to_review:
        audit_record(action="returned_to_review", actor=actor, version=version, change_request=request,
                     reason=f"compared with {_numbered(request.base_version)} now (the live version changed)")
    return request


@transaction.atomic
def change_request_comment(*, change_request: ChangeRequest, actor, comment: str):
    """A remark in the review thread (editors on their workflows, reviewers anywhere)."""
    if actor is not None and not user_can(actor, REVIEW, change_request.workflow):
        require(actor, PROPOSE, change_request.workflow)
    comment = require_reason(actor, comment, "comment")
    return audit_record(action="commented", actor=actor, version=change_request.version,
                        change_request=change_request, reason=comment)


@transaction.atomic
def version_approve(*, version: WorkflowVersion, actor=None, comment: str = "",
                    expected_fingerprint: str | None = None) -> WorkflowVersion:
    """A reviewer approves what they saw. The approval is bound to the content's fingerprint."""
    version = version_lock(version)
    require(actor, REVIEW, version.workflow)
    if version.state != VersionState.IN_REVIEW:
        raise ValidationError(f"only versions in review can be approved; v{version.number} is {version.state}")
    request = _open_request(version)
    if actor is not None and not actor.is_superuser and actor.pk in version_authors(version=version):
        raise PermissionDenied(f"a change must be approved by someone other than its authors: {actor} created, "
                               f"edited or proposed v{version.number} (or the unpublished draft it was copied "
                               "from); ask another reviewer")
    fingerprint = version_fingerprint(version=version)
    if expected_fingerprint and expected_fingerprint != fingerprint:
        raise ValidationError("the version changed while you were reviewing it; reload the review page")
    if request is not None and (moved := change_request_base_moved(change_request=request, workflow=version.workflow)):
        raise ValidationError(moved, code="base_moved")  # an approval is of the diff against the live version
    report = version_validate(version=version)
    if not report.ok:
        raise ValidationError({"__all__": report.errors})
    now = timezone.now()
    version.state, version.approved_at, version.approved_by = VersionState.APPROVED, now, actor
    version.approved_fingerprint = fingerprint
    _save(version, f"approved: {comment}".strip(": "), ["state", "approved_at", "approved_by", "approved_fingerprint"])
    if request is not None:
        request.status, request.decided_by, request.decided_at = ChangeRequestStatus.APPROVED, actor, now
        request.decision_comment = comment
        request.save(update_fields=["status", "decided_by", "decided_at", "decision_comment"])
    audit_record(action="approved", actor=actor, version=version, change_request=request, reason=comment,
                 data={"fingerprint": fingerprint})
    return version


@transaction.atomic
def version_reject(*, version: WorkflowVersion, actor=None, comment: str = "") -> WorkflowVersion:
    """A reviewer sends the proposal back to its author as a draft, saying why."""
    version = version_lock(version)
    require(actor, REVIEW, version.workflow)
    comment = require_reason(actor, comment, "comment")
    if version.state not in (VersionState.IN_REVIEW, VersionState.APPROVED) or version.is_frozen:
        raise ValidationError(f"v{version.number} is {version.state}; only proposals can be rejected")
    request = _open_request(version)
    version.state, version.approved_fingerprint, version.approved_at, version.approved_by = (
        VersionState.DRAFT, "", None, None)
    _save(version, f"rejected: {comment}", ["state", "approved_fingerprint", "approved_at", "approved_by"])
    if request is not None:
        request.status, request.decided_by, request.decided_at = ChangeRequestStatus.REJECTED, actor, timezone.now()
        request.decision_comment = comment
        request.save(update_fields=["status", "decided_by", "decided_at", "decision_comment"])
    audit_record(action="rejected", actor=actor, version=version, change_request=request, reason=comment)
    return version


def _guard_approval(version: WorkflowVersion, actor) -> None:
    """Content changed after approval (shell, API, bulk update)? Send it back to review, for good
    (this commits even though the caller then fails), and refuse."""
    if actor is None:
        return
    with transaction.atomic():
        version = version_lock(version)
        if version.state != VersionState.APPROVED or version_fingerprint(version=version) == version.approved_fingerprint:
            return
        version.state, version.approved_fingerprint = VersionState.IN_REVIEW, ""
        _save(version, "changed after approval, back to review", ["state", "approved_fingerprint"])
        request = _open_request(version)
        if request is not None and request.status == ChangeRequestStatus.APPROVED:
            request.status = ChangeRequestStatus.OPEN
            request.save(update_fields=["status"])
        audit_record(action="returned_to_review", actor=actor, version=version, change_request=request,
                     reason="content differs from what was approved")
    raise ValidationError(f"v{version.number} changed after approval and is back in review")


BASE_MOVED = ("v{number} was approved as a change to {base}, but {live} is live now: publishing it would undo what "
              "went live since. Refresh its review (it is then compared with {live} and needs a new approval), or "
              "reject it and make the change again in a new draft from {live}")
BASE_MOVED_IN_REVIEW = ("v{number} was proposed as a change to {base}, but {live} is live now: refresh its review "
                        "(it is then compared with {live}) before approving it")


def _numbered(version: WorkflowVersion | None) -> str:
    return f"v{version.number}" if version is not None else "no live version"


def change_request_base_moved(*, change_request: ChangeRequest, workflow: Workflow | None = None) -> str:
    """Why a change request cannot be approved or go live as it stands: another version went live
    since it was proposed (or last refreshed), so its diff and dry run are against an old base.
    "" when its base is still the live version. `workflow`: the (locked) row to read the live version from."""
    workflow = workflow or change_request.workflow
    if change_request.base_version_id == workflow.live_version_id:
        return ""
    said = BASE_MOVED if change_request.status == ChangeRequestStatus.APPROVED else BASE_MOVED_IN_REVIEW
    return said.format(number=change_request.version.number, base=_numbered(change_request.base_version),
                       live=_numbered(workflow.live_version))


def _check_publishable(version: WorkflowVersion, actor) -> None:
    """Called under the workflow's row lock (`version.workflow` is the locked row): what it checks
    cannot change before the caller's publish or canary commits."""
    if actor is None:
        if version.state == VersionState.LIVE:
            raise ValidationError(f"v{version.number} is already live")
        return
    if version.state != VersionState.APPROVED:
        raise ValidationError(f"v{version.number} is {version.state}: only approved versions can go live")
    if version_fingerprint(version=version) != version.approved_fingerprint:
        raise ValidationError(f"v{version.number} changed after approval; it needs a new review")
    request = _open_request(version)
    if request is not None and request.workflow_id != version.workflow_id:
        # The fingerprint is of what the version does, not where: bound to its workflow here, so
        # that existing approvals keep their fingerprints.
        raise ValidationError(f"v{version.number} was approved for workflow {request.workflow.name!r}, not "
                              f"{version.workflow.name!r}; it needs a new review there")
    if request is not None and (moved := change_request_base_moved(change_request=request, workflow=version.workflow)):
        # The approval was of the diff against the base: against what is live now it would also
        # take back every change published since, which nobody reviewed.
        raise ValidationError(moved, code="base_moved")


def _retire(version: WorkflowVersion, reason: str, now) -> None:
    version.state, version.retired_at = VersionState.RETIRED, now
    _save(version, reason, ["state", "retired_at"])


def version_publish(*, version: WorkflowVersion, actor=None, reason: str = "published") -> WorkflowVersion:
    """Make a version fully live: it is frozen, the previous live version (and any canary) retires,
    workers reload their trigger index.

    People may only publish approved versions whose content is what was approved; the system
    (actor=None: demo data, tests, command-line imports) may publish a draft directly.
    Runs already in flight stay on the version they started on.
    """
    require(actor, PUBLISH, version.workflow)
    _guard_approval(version, actor)
    return _publish(version=version, actor=actor, reason=reason)


@transaction.atomic
def _publish(*, version: WorkflowVersion, actor, reason: str) -> WorkflowVersion:
    version = version_lock(version)
    workflow = version.workflow
    reason = require_reason(actor, reason) or "published"
    _check_publishable(version, actor)
    report = version_validate(version=version)
    if not report.ok:
        raise ValidationError({"__all__": report.errors})
    now = timezone.now()
    for previous in WorkflowVersion.objects.filter(workflow=workflow, state=VersionState.LIVE).exclude(pk=version.pk):
        _retire(previous, f"retired by v{version.number}: {reason}", now)
    if workflow.canary_version_id and workflow.canary_version_id != version.pk:
        _retire(workflow.canary_version, f"canary replaced by v{version.number}: {reason}", now)
    was_canary = workflow.canary_version_id == version.pk
    version.state = VersionState.LIVE
    version.frozen_at = version.frozen_at or now
    version.published_at = now
    version.retired_at = None
    _save(version, reason, ["state", "frozen_at", "published_at", "retired_at"])
    workflow.live_version, workflow.canary_version, workflow.canary_percent = version, None, 0
    _save(workflow, f"v{version.number} live: {reason}", ["live_version", "canary_version", "canary_percent"])
    request = _open_request(version)
    if request is not None:
        request.status = ChangeRequestStatus.PUBLISHED
        request.save(update_fields=["status"])
    audit_record(action="promoted" if was_canary else "published", actor=actor, version=version,
                 change_request=request, reason=reason)
    bump_generation()
    return version


def version_canary_start(*, version: WorkflowVersion, percent: int, actor=None,
                         reason: str = "canary") -> WorkflowVersion:
    """Stage an approved version as a canary: `percent`% of NEW entries (chosen deterministically
    per customer) go to it, the rest to the live version. Call again to change the share;
    `version_publish` promotes it, `workflow_canary_stop` or `workflow_rollback` ends it."""
    require(actor, PUBLISH, version.workflow)
    _guard_approval(version, actor)
    return _canary_start(version=version, percent=percent, actor=actor, reason=reason)


@transaction.atomic
def _canary_start(*, version: WorkflowVersion, percent: int, actor, reason: str) -> WorkflowVersion:
    version = version_lock(version)
    workflow = version.workflow
    reason = require_reason(actor, reason) or "canary"
    if not isinstance(percent, int) or not 1 <= percent <= 99:
        raise ValidationError({"percent": "the canary share is a whole percentage from 1 to 99"})
    live = workflow.live_version
    if live is None:
        raise ValidationError("a canary runs beside a live version; publish this one directly instead")
    if workflow.canary_version_id != version.pk:
        if actor is not None:
            _check_publishable(version, actor)
        elif version.state not in EDITABLE_STATES:
            raise ValidationError(f"v{version.number} is {version.state}")
        report = version_validate(version=version)
        if not report.ok:
            raise ValidationError({"__all__": report.errors})
        now = timezone.now()
        if workflow.canary_version_id:
            _retire(workflow.canary_version, f"canary replaced by v{version.number}", now)
        if version.state != VersionState.APPROVED:  # the system may stage a draft directly
            version.state = VersionState.APPROVED
            version.approved_fingerprint = version_fingerprint(version=version)
        version.frozen_at = now  # it serves customers now: it must not change under them
        _save(version, f"canary {percent}%: {reason}", ["state", "approved_fingerprint", "frozen_at"])
    previous = workflow.canary_percent if workflow.canary_version_id == version.pk else 0
    workflow.canary_version, workflow.canary_percent = version, percent
    _save(workflow, f"canary v{version.number} at {percent}%: {reason}", ["canary_version", "canary_percent"])
    audit_record(action="canary_started" if not previous else "canary_share_changed", actor=actor, version=version,
                 change_request=_open_request(version), reason=reason, data={"percent": percent, "previous": previous})
    bump_generation()
    return version


def releases_token(*, workflow: Workflow) -> str:
    """What a page showed of a workflow's releases (its live and canary versions), for the `loaded`
    of `workflow_rollback` and `workflow_canary_stop`."""
    return f"{workflow.live_version_id or ''}:{workflow.canary_version_id or ''}"


def _releases_said(workflow: Workflow, token: str) -> str:
    """The live and canary versions a `releases_token` names, in words ("v4 live, canary v5")."""
    live_id, _, canary_id = token.partition(":")
    numbers = dict(WorkflowVersion.objects.filter(workflow=workflow, pk__in=[i for i in (live_id, canary_id)
                                                                            if i.isdigit()])
                   .values_list("pk", "number"))
    live = f"v{numbers[int(live_id)]} live" if live_id.isdigit() and int(live_id) in numbers else "no live version"
    return live + (f", canary v{numbers[int(canary_id)]}" if canary_id.isdigit() and int(canary_id) in numbers else
                   ", no canary")


RELEASES_MOVED = ("{workflow} changed since this page was opened: it showed {then}, now it has {now}. Nothing was "
                  "done: reload the page and look again before you {what}")


def _check_releases_shown(workflow: Workflow, loaded: str | None, what: str) -> None:
    """Under the workflow's lock: act only on the live and canary versions the page showed (of two
    people rolling back one bad release at once, the second would otherwise take out the one
    before it too, or bring back a release someone just replaced with a fix)."""
    if loaded is not None and loaded != releases_token(workflow=workflow):
        raise ValidationError(RELEASES_MOVED.format(workflow=workflow, then=_releases_said(workflow, loaded),
                                                    now=_releases_said(workflow, releases_token(workflow=workflow)),
                                                    what=what), code="changed_meanwhile")


@transaction.atomic
def workflow_canary_stop(*, workflow: Workflow, actor=None, reason: str = "canary stopped",
                         loaded: str | None = None) -> Workflow:
    """End a canary without promoting it: new entries all go to the live version again.
    Runs already on the canary version finish on it. `loaded` (`releases_token` of the page the
    person acted on): refused if the live or canary version changed since."""
    require(actor, PUBLISH, workflow)
    reason = require_reason(actor, reason) or "canary stopped"
    workflow = _lock_workflow(workflow.pk)
    _check_releases_shown(workflow, loaded, "stop the canary")
    canary = workflow.canary_version
    if canary is None:
        raise ValidationError(f"{workflow} has no canary")
    _retire(canary, f"canary stopped: {reason}", timezone.now())
    workflow.canary_version, workflow.canary_percent = None, 0
    _save(workflow, f"canary v{canary.number} stopped: {reason}", ["canary_version", "canary_percent"])
    audit_record(action="canary_stopped", actor=actor, workflow=workflow, version=canary, reason=reason)
    bump_generation()
    return workflow


ROLLBACK_TARGET_INVALID = ("v{number} cannot be live again: it no longer passes the checks publishing makes "
                           "({errors}). Nothing was rolled back: fix it in a new draft from v{number} and publish "
                           "that, or publish another version")


@transaction.atomic
def workflow_rollback(*, workflow: Workflow, actor=None, reason: str = "rolled back",
                      loaded: str | None = None) -> WorkflowVersion:
    """One-click rollback: a running canary stops; otherwise the version that was live before the
    current one becomes live again. Runs in flight stay on their versions; workers reload.
    A version rolled back from is never a target again until it is published anew: a second
    rollback goes one step further back (or is refused), it does not undo the first.
    `loaded` (`releases_token` of the page the person acted on): refused if the live or canary
    version changed since. The target must pass the checks publishing makes (`version_validate`):
    a template or channel it uses may have been deleted since it was live."""
    require(actor, PUBLISH, workflow)
    reason = require_reason(actor, reason) or "rolled back"
    workflow = _lock_workflow(workflow.pk)
    _check_releases_shown(workflow, loaded, "roll back")
    if workflow.canary_version_id:
        workflow_canary_stop(workflow=workflow, actor=actor, reason=f"rollback: {reason}")
        return workflow.live_version
    current = workflow.live_version
    rejected = {}  # version number -> when it was last rolled back from
    for at, data in AuditEntry.objects.filter(action="rolled_back", workflow=workflow).values_list("at", "data"):
        if isinstance(data, dict) and data.get("from") is not None:
            rejected[data["from"]] = max(at, rejected.get(data["from"], at))
    candidates = (WorkflowVersion.objects.filter(workflow=workflow, state=VersionState.RETIRED,
                                                 published_at__isnull=False)
                  .exclude(pk=getattr(current, "pk", None)).order_by("-retired_at", "-number"))
    previous = next((v for v in candidates if not (v.number in rejected and rejected[v.number] >= v.published_at)),
                    None)
    if previous is None:
        raise ValidationError(f"{workflow} has no earlier live version to roll back to")
    previous = version_lock(previous)
    report = version_validate(version=previous)
    if not report.ok:
        raise ValidationError(ROLLBACK_TARGET_INVALID.format(number=previous.number, errors="; ".join(report.errors)),
                              code="invalid")
    now = timezone.now()
    if current is not None:
        _retire(current, f"rolled back to v{previous.number}: {reason}", now)
    previous.state, previous.published_at, previous.retired_at = VersionState.LIVE, now, None
    _save(previous, f"live again by rollback: {reason}", ["state", "published_at", "retired_at"])
    workflow.live_version = previous
    _save(workflow, f"rolled back to v{previous.number}: {reason}", ["live_version"])
    audit_record(action="rolled_back", actor=actor, workflow=workflow, version=previous, reason=reason,
                 data={"from": getattr(current, "number", None), "to": previous.number})
    bump_generation()
    return previous


@transaction.atomic
def version_retire(*, version: WorkflowVersion, actor=None, reason: str = "retired") -> WorkflowVersion:
    """Take a version out of service (the workflow then has no live version)."""
    version = version_lock(version)
    workflow = version.workflow
    require(actor, PUBLISH, version.workflow)
    reason = require_reason(actor, reason) or "retired"
    _retire(version, reason, timezone.now())
    if workflow.live_version_id == version.pk:
        workflow.live_version = None
    if workflow.canary_version_id == version.pk:
        workflow.canary_version, workflow.canary_percent = None, 0
    _save(workflow, f"v{version.number} retired: {reason}", ["live_version", "canary_version", "canary_percent"])
    audit_record(action="retired", actor=actor, version=version, reason=reason)
    bump_generation()
    return version


def workflow_version_diff(*, old: WorkflowVersion | None, new: WorkflowVersion, actor=None) -> dict:
    """The readable diff, for people allowed to see the workflow."""
    from journeys.selectors import VIEW

    require(actor, VIEW, new.workflow)
    return version_diff(old=old, new=new)


# What a person edits on a workflow's page. Its status (pause) and its live and canary pointers
# belong to the governed operations (pause and resume, publish, canary, rollback).
WORKFLOW_EDITABLE_FIELDS = ("name", "description", "business_unit")


def workflow_token(*, workflow: Workflow) -> str:
    """The workflow's page as it shows it, for `workflow_save(loaded=...)`: its editable fields
    (a pause, publish or canary does not change it: they are not written by the page)."""
    return fields_token(workflow, WORKFLOW_EDITABLE_FIELDS)


def workflow_rename_check(*, workflow: Workflow, name: str) -> None:
    """Refuse to rename a workflow while versions in use name it in a start_workflow step (the
    workflow to start, or one whose runs end): they find workflows by name at run time, so after
    the rename their runs would fail there, or stop ending those runs without a word. The same
    check as for templates and channels (journeys.services.references)."""
    stored = Workflow.objects.filter(pk=workflow.pk).values_list("name", flat=True).first()
    config_rename_check(what="workflow", old=stored or "", new=name)


@transaction.atomic
def workflow_save(*, workflow: Workflow, actor=None, reason: str = "", loaded: str | None = None) -> Workflow:
    """Save a workflow edited in a form (`workflow` carries the edited values). The actor must be
    allowed to edit it before and after the change (an editor cannot move a workflow into a unit
    they do not own).

    Only the editable fields are written, onto the stored row read again under its lock: a pause,
    publish or canary that committed while the form was open or being saved stays as it is (a
    whole-row save of the form's copy would resume the workflow or move its live pointer back,
    with an audit record saying only "edited"). `loaded` (`workflow_token` of the page): a page
    opened before someone else saved these fields is refused (`DraftChanged`, nothing saved)."""
    reason = require_reason(actor, reason)
    if not workflow.pk:
        require(actor, EDIT, workflow)
        history_stamp(workflow, actor=actor, reason=reason or "edited").save()
        audit_record(action="workflow_edited", actor=actor, workflow=workflow, reason=reason)
        return workflow
    current = Workflow.objects.select_for_update().select_related("business_unit").get(pk=workflow.pk)
    require(actor, EDIT, current)
    edit_refuse_stale(loaded=loaded, now=workflow_token(workflow=current), what=current.name,
                      history=current.history.all(), token_of=lambda row: workflow_token(workflow=row))
    workflow_rename_check(workflow=current, name=workflow.name)
    changed = [name for name in WORKFLOW_EDITABLE_FIELDS
               if getattr(current, Workflow._meta.get_field(name).attname)
               != getattr(workflow, Workflow._meta.get_field(name).attname)]
    for name in WORKFLOW_EDITABLE_FIELDS:
        setattr(current, name, getattr(workflow, name))
    require(actor, EDIT, current)
    history_stamp(current, actor=actor, reason=reason or "edited")
    current.save(update_fields=[*WORKFLOW_EDITABLE_FIELDS, "updated_at"])
    audit_record(action="workflow_edited", actor=actor, workflow=current, reason=reason, data={"fields": changed})
    return current


# What a step's form edits: its page and the canvas's side panel carry `step_token` of these.
STEP_FORM_FIELDS = ("key", "kind", "name", "config")


def step_token(*, step: Step) -> str:
    """The step as its form shows it, for `step_save(loaded=...)`."""
    return fields_token(step, STEP_FORM_FIELDS)


def _step_unchanged(step: Step, loaded: str) -> None:
    stored = Step.objects.filter(pk=step.pk).first()
    if stored is None:
        raise DraftChanged(DELETED_SINCE.format(what=f"step {step.key}"), code="changed_meanwhile")
    edit_refuse_stale(loaded=loaded, now=step_token(step=stored), what=f"step {stored.key}",
                      history=stored.history.all(), token_of=lambda row: step_token(step=row))


STEP_KEY_TAKEN = "this version already has a step {key!r}"


@transaction.atomic
def step_save(
    *, version: WorkflowVersion, step: Step | None, key: str, kind: str, name: str, config: dict,
    after: str = "", actor=None, reason: str = "", loaded: str | None = None,
) -> Step:
    """Save a step (new when `step` is None) with its validated config, connect it after `after`
    ("<step key>:<outcome>", optional) and record the edit on the version, which re-checks the
    actor's scope and sends an approved version back to review. `loaded` (`step_token` of the step
    its page showed): a step saved or deleted since by someone else is not written over
    (`DraftChanged`, nothing saved)."""
    version = version_lock(version)
    version_check_editable(version=version, actor=actor)
    if step is not None and loaded is not None:  # every step edit locks its version first: read under that lock
        _step_unchanged(step, loaded)
    step = step or Step(version=version)
    renamed_entry = step.pk is not None and version.entry_step == step.key != key
    # Checked again under the lock: another editor's step with this key may have committed since
    # the form checked it (the savepoint answers the same for a writer that takes no lock).
    if Step.objects.filter(version=version, key=key).exclude(pk=step.pk).exists():
        raise ValidationError({"key": STEP_KEY_TAKEN.format(key=key)})
    step.key, step.kind, step.name, step.config = key, kind, name, config
    try:
        with transaction.atomic():
            history_stamp(step, actor=actor, reason=reason).save()
    except IntegrityError:
        raise ValidationError({"key": STEP_KEY_TAKEN.format(key=key)}) from None
    if after:
        source_key, _, outcome = after.rpartition(":")
        source = Step.objects.get(version=version, key=source_key)
        edge = Edge.objects.filter(source=source, outcome=outcome).first() or Edge(
            version=version, source=source, outcome=outcome)
        edge.target = step
        history_stamp(edge, actor=actor, reason=reason).save()
    if not version.entry_step or renamed_entry:  # the first step starts the run; a renamed entry stays it
        version.entry_step = step.key
        history_stamp(version, actor=actor, reason=reason).save(update_fields=["entry_step", "updated_at"])
    version_note_changed(version=version, actor=actor, reason=reason)
    return step
