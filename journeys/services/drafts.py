"""Editing a draft's graph one change at a time: what the canvas does (add a step from the
palette, place steps, connect, relabel and remove edges, delete a step, save a step's form or
the trigger settings) and its undo.

Every operation runs in one transaction: the version row is locked, the version must be a
draft the actor may edit (a version in review, approved or live is read-only here: make a new
draft from it), a person must say why, every row saved or deleted carries who and why in its
history, and the edit is recorded on the version (`version_note_changed`: the audit log).
A step dropped from the palette may still lack settings its kind requires: validation reports
that on the step until its form is saved, and a version with errors cannot be proposed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.db import transaction

from journeys.choices import ReentryPolicy, VersionState
from journeys.engine.registry import get_kind
from journeys.errors import DraftChanged
from journeys.models import Edge, Step, WorkflowVersion
from journeys.rules import validate_rule
from journeys.services.definitions import MAX_COORDINATE, VERSION_FIELDS
from journeys.services.governance import history_stamp, require_reason
from journeys.services.stale_edits import edit_token
from journeys.services.workflows import (
    step_save,
    step_token,
    trigger_clean,
    version_check_editable,
    version_lock,
    version_note_changed,
)

T = TypeVar("T")
START = "start"  # the edge from the trigger to the entry step (not a row: the version's entry_step)
SETTINGS = tuple(f for f in VERSION_FIELDS if f != "notes")
DRAWING_CHANGED = ("the draft changed since this drawing of it was loaded (in another tab or by another editor): "
                   "nothing was changed; the drawing now shows the draft as it is, do it again if you still want it")


def _stage(version: WorkflowVersion) -> str:
    return version.stage.replace("_", " ")  # "in review", "canary", "live"...


def _draft(version: WorkflowVersion, actor: Any) -> WorkflowVersion:
    """The version locked for this transaction, if it is a draft the actor may edit."""
    version = version_lock(version)
    version_check_editable(version=version, actor=actor)
    if version.state != VersionState.DRAFT:
        raise ValidationError(f"v{version.number} is {_stage(version)}: only a draft changes on the canvas; "
                              "create a new draft from it to change it")
    return version


def _editing(version: WorkflowVersion, actor: Any, reason: str) -> tuple[WorkflowVersion, str]:
    """The locked draft and the reason every change by a person gives."""
    return _draft(version, actor), require_reason(actor, reason)


def _step(version: WorkflowVersion, key: str, field: str) -> Step:
    step = Step.objects.filter(version=version, key=key).first()
    if step is None:
        raise ValidationError({field: f"this version has no step {key!r}"})
    return step


def _outcomes(step: Step) -> list[str]:
    try:
        return get_kind(step.kind).outcomes(step.config or {})
    except (ValidationError, KeyError, TypeError, ValueError):
        return []


def _check_outcome(step: Step, outcome: str) -> None:
    """An edge leaves by one of the step's outcomes (any name when the kind declares none yet)."""
    outcomes = _outcomes(step)
    if outcomes and outcome not in outcomes:
        raise ValidationError({"outcome": f"step {step.key} has no outcome {outcome!r}; its outcomes: "
                                          f"{', '.join(outcomes)}"})
    if not outcome:
        raise ValidationError({"outcome": f"say which outcome of {step.key} the edge leaves by"})


def _after(version: WorkflowVersion, after: str) -> tuple[Step, str]:
    """The step and outcome a new step follows, written "key:outcome" (e.g. email:sent)."""
    source_key, colon, outcome = after.rpartition(":")
    if not colon:  # a step's key alone: which of its outcomes?
        outcomes = _outcomes(_step(version, after, "after"))
        raise ValidationError({"after": f"{after!r} lacks the outcome the new step follows: write key:outcome, e.g. "
                                        f"{after}:{outcomes[0] if outcomes else 'next'}"
                                        + (f" (outcomes of {after}: {', '.join(outcomes)})" if outcomes else "")})
    source = _step(version, source_key, "after")
    try:
        _check_outcome(source, outcome)
    except ValidationError as exc:  # said of the field the canvas sent
        raise ValidationError({"after": exc.message_dict["outcome"]}) from None
    return source, outcome


def _save(obj: Any, actor: Any, reason: str, **kwargs: Any) -> Any:
    history_stamp(obj, actor=actor, reason=reason).save(**kwargs)
    return obj


def _delete(obj: Any, actor: Any, reason: str) -> None:
    history_stamp(obj, actor=actor, reason=reason).delete()


def _set_entry(version: WorkflowVersion, key: str, actor: Any, reason: str) -> None:
    if version.entry_step != key:
        version.entry_step = key
        _save(version, actor, reason, update_fields=["entry_step", "updated_at"])


def _connect(version: WorkflowVersion, source: Step, outcome: str, target: Step, actor: Any, reason: str) -> Edge:
    edge = Edge.objects.filter(source=source, outcome=outcome).first() or Edge(
        version=version, source=source, outcome=outcome)
    edge.target = target
    return _save(edge, actor, reason)


def _place(version: WorkflowVersion, positions: dict | None, actor: Any, reason: str) -> None:
    """Move steps to canvas positions {key: [x, y]} (pixels); unchanged ones are not saved."""
    if not positions:
        return
    if not isinstance(positions, dict):
        raise ValidationError({"positions": "must be an object of step key -> [x, y]"})
    steps = {s.key: s for s in Step.objects.filter(version=version, key__in=list(positions))}
    for key, xy in positions.items():
        if key not in steps:
            raise ValidationError({"positions": f"this version has no step {key!r}"})
        if (not isinstance(xy, (list, tuple)) or len(xy) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= MAX_COORDINATE
                           for v in xy)):
            raise ValidationError({"positions": f"{key}: a position is [x, y], numbers within ±{MAX_COORDINATE}"})
        step, (x, y) = steps[key], (round(xy[0]), round(xy[1]))
        if (step.x, step.y) != (x, y):
            step.x, step.y = x, y
            _save(step, actor, reason, update_fields=["x", "y"])


def _free_key(version: WorkflowVersion, kind: str) -> str:
    taken = set(Step.objects.filter(version=version, key__startswith=kind).values_list("key", flat=True))
    n = 1
    while f"{kind}_{n}" in taken:
        n += 1
    return f"{kind}_{n}"


# --------------------------------------------------------------------------- one change at a time


@dataclass(frozen=True)
class DraftEdit:
    """What a canvas change did: its result, the graph before it (for undo) and the state after."""

    result: Any
    before: dict
    after: str  # fingerprint of the graph after the change: undo only applies on top of it


def draft_edit(*, version: WorkflowVersion, actor: Any, reason: str,
               change: Callable[[WorkflowVersion], T], loaded: str = "") -> DraftEdit:
    """Run one change of a draft (`change(version)` calls the services below) in one transaction,
    keeping the graph as it was before, so that the change can be undone. `loaded` is the
    `draft_fingerprint` of the drawing the change was made on: when the draft has changed since
    (another tab, another editor), nothing is changed (`DraftChanged`). Without it, the change
    applies to the draft as it is."""
    with transaction.atomic():
        reason = require_reason(actor, reason)
        locked = _draft(version, actor)
        before = version_snapshot(version=locked)
        if loaded and snapshot_fingerprint(before) != loaded:
            raise DraftChanged(DRAWING_CHANGED)
        result = change(locked)
        after = version_snapshot(version=WorkflowVersion.objects.get(pk=locked.pk))  # the services saved their own copy
        return DraftEdit(result=result, before=before, after=snapshot_fingerprint(after))


@transaction.atomic
def step_add(*, version: WorkflowVersion, kind: str, x: float, y: float, after: str = "", insert: str | int = "",
             positions: dict | None = None, actor: Any = None, reason: str = "") -> Step:
    """Add a step of `kind` at (x, y): on its own, after a step's outcome (`after`, "key:outcome"),
    or inserted on an edge (`insert`: an edge id, or "start" for before the entry step). An
    occupied outcome takes the new step in between. Its key is free to change in its form."""
    version, reason = _editing(version, actor, reason)
    step_kind = get_kind(kind)
    _place(version, positions, actor, reason)
    try:  # a kind whose empty config is complete (a goal, an exit) starts complete
        config = step_kind.clean({})
    except (ValidationError, KeyError, TypeError, ValueError):
        config = {}
    step = _save(Step(version=version, key=_free_key(version, kind), kind=kind, config=config), actor, reason)
    _place(version, {step.key: [x, y]}, actor, reason)
    first = next(iter(step_kind.outcomes(config) or []), None)
    if after:
        source, outcome = _after(version, str(after))
        old = Edge.objects.filter(source=source, outcome=outcome).select_related("target").first()
        _connect(version, source, outcome, step, actor, reason)
        if old is not None and first:
            _connect(version, step, first, old.target, actor, reason)
    elif insert == START:
        if version.entry_step and first and (entry := Step.objects.filter(version=version, key=version.entry_step).first()):
            _connect(version, step, first, entry, actor, reason)
        _set_entry(version, step.key, actor, reason)
    elif insert:
        edge = Edge.objects.filter(version=version, pk=insert).select_related("target").first() \
            if str(insert).isdigit() else None
        if edge is None:
            raise ValidationError({"insert": f"this version has no edge {insert!r}"})
        old_target = edge.target
        edge.target = step
        _save(edge, actor, reason)
        if first:
            _connect(version, step, first, old_target, actor, reason)
    if not version.entry_step:
        _set_entry(version, step.key, actor, reason)
    version_note_changed(version=version, actor=actor, reason=reason)
    return step


@transaction.atomic
def steps_place(*, version: WorkflowVersion, positions: dict, actor: Any = None, reason: str = "") -> None:
    """Move steps on the canvas ({key: [x, y]}, pixels)."""
    version, reason = _editing(version, actor, reason)
    _place(version, positions, actor, reason)
    version_note_changed(version=version, actor=actor, reason=reason)


@transaction.atomic
def edge_connect(*, version: WorkflowVersion, source: str, outcome: str, target: str, actor: Any = None,
                 reason: str = "") -> Edge:
    """Connect outcome `outcome` of step `source` to step `target` (replacing where it led);
    `source` "start" makes `target` the entry step."""
    version, reason = _editing(version, actor, reason)
    to = _step(version, target, "target")
    if source == START:
        _set_entry(version, to.key, actor, reason)
        version_note_changed(version=version, actor=actor, reason=reason)
        return None
    origin = _step(version, source, "source")
    _check_outcome(origin, outcome)
    edge = _connect(version, origin, outcome, to, actor, reason)
    version_note_changed(version=version, actor=actor, reason=reason)
    return edge


def _edge(version: WorkflowVersion, edge_id: Any) -> Edge:
    edge = Edge.objects.filter(version=version, pk=edge_id).select_related("source", "target").first() \
        if str(edge_id).isdigit() else None
    if edge is None:
        raise ValidationError({"edge": f"this version has no edge {edge_id!r}"})
    return edge


@transaction.atomic
def edge_relabel(*, version: WorkflowVersion, edge: Any, outcome: str, actor: Any = None, reason: str = "") -> Edge:
    """Let an edge leave its step by another outcome (one edge per outcome)."""
    version, reason = _editing(version, actor, reason)
    found = _edge(version, edge)
    _check_outcome(found.source, outcome)
    taken = Edge.objects.filter(source=found.source, outcome=outcome).exclude(pk=found.pk).select_related("target").first()
    if taken is not None:
        raise ValidationError({"outcome": f"{found.source.key} already leads to {taken.target.key} when {outcome!r}; "
                                          "delete that edge first"})
    found.outcome = outcome
    _save(found, actor, reason)
    version_note_changed(version=version, actor=actor, reason=reason)
    return found


@transaction.atomic
def edge_delete(*, version: WorkflowVersion, edge: Any, actor: Any = None, reason: str = "") -> None:
    version, reason = _editing(version, actor, reason)
    _delete(_edge(version, edge), actor, reason)
    version_note_changed(version=version, actor=actor, reason=reason)


@transaction.atomic
def step_delete(*, version: WorkflowVersion, step: str, actor: Any = None, reason: str = "") -> None:
    """Delete a step and every edge to or from it. When it was the entry step, the step its first
    edge led to (if any) becomes the entry."""
    version, reason = _editing(version, actor, reason)
    found = _step(version, step, "step")
    edges = list(Edge.objects.filter(version=version).filter(source=found) | Edge.objects.filter(target=found))
    successor = next((e.target.key for e in sorted(edges, key=lambda e: e.pk)
                      if e.source_id == found.pk and e.target_id != found.pk), "")
    for edge in edges:
        _delete(edge, actor, reason)
    _delete(found, actor, reason)
    if version.entry_step == found.key:
        _set_entry(version, successor, actor, reason)
    version_note_changed(version=version, actor=actor, reason=reason)


@transaction.atomic
def step_form_save(*, version: WorkflowVersion, step: Step, key: str, kind: str, name: str, config: dict,
                   actor: Any = None, reason: str = "", loaded: str = "") -> Step:
    """A step's form saved from the canvas's side panel: `step_save` on a draft. `loaded` is the
    `step_fingerprint` of the step as the form showed it: when the step has been saved (or
    deleted) since, by another tab or editor, nothing is saved (`DraftChanged`) rather than
    their change being overwritten unseen. `step` is read again once the draft is locked."""
    version = _draft(version, actor)
    shown = step.key
    try:
        step.refresh_from_db()
    except Step.DoesNotExist:
        raise DraftChanged(f"step {shown} is no longer in the draft (deleted in another tab or by another "
                           "editor): nothing was saved") from None
    if loaded and step_fingerprint(step=step) != loaded:
        raise DraftChanged(f"step {shown} changed since you opened it (in another tab or by another editor): "
                           "nothing was saved; reload it to see the change (your text is still in the form)")
    return step_save(version=version, step=step, key=key, kind=kind, name=name, config=config, actor=actor,
                     reason=reason)


def _rule_field(values: dict, name: str) -> None:
    if (text := values.get(name)) and (problems := validate_rule(text)):
        raise ValidationError({name: f"rule error: {problems[0]}"})


def version_settings_clean(*, version: WorkflowVersion, values: dict) -> dict:
    """A version's trigger and entry settings with `values` over the stored ones, checked: the
    trigger (kind, event, config: a cron, a window...), the re-entry policy, the entry and goal
    rules, and the entry step (a step of the version). Every form that edits them (the canvas's
    start node, the version's admin page) checks them here, so one refuses what the other does.
    Returns the merged settings (the trigger config normalised); ValidationError names the field."""
    unknown = set(values) - set(SETTINGS)
    if unknown:
        raise ValidationError({sorted(unknown)[0]: "is not a setting of a version"})
    merged = {f: values.get(f, getattr(version, f)) for f in SETTINGS}
    merged["trigger_config"] = trigger_clean(kind=merged["trigger_kind"], event=merged["trigger_event"],
                                             config=merged["trigger_config"])
    if merged["reentry_policy"] not in ReentryPolicy.values:
        raise ValidationError({"reentry_policy": f"must be one of {', '.join(ReentryPolicy.values)}"})
    for name in ("entry_rule", "goal_filter"):
        _rule_field(merged, name)
    if (merged["entry_step"] and version.pk is not None
            and not Step.objects.filter(version=version, key=merged["entry_step"]).exists()):
        raise ValidationError({"entry_step": f"this version has no step {merged['entry_step']!r}"})
    return merged


@transaction.atomic
def version_settings_save(*, version: WorkflowVersion, values: dict, actor: Any = None,
                          reason: str = "", loaded: str = "") -> WorkflowVersion:
    """The trigger and entry settings of a draft (the canvas's start node): trigger kind, event
    and config, entry rule and step, re-entry policy, goal event and filter. `loaded` is the
    `settings_fingerprint` the form was opened with: settings saved since by someone else are
    never overwritten unseen (`DraftChanged`)."""
    version, reason = _editing(version, actor, reason)
    if loaded and settings_fingerprint(version=version) != loaded:
        raise DraftChanged("the trigger settings changed since you opened them (in another tab or by another "
                           "editor): nothing was saved; reload them to see the change (your text is still in "
                           "the form)")
    merged = version_settings_clean(version=version, values=values)
    changed = [f for f in SETTINGS if getattr(version, f) != merged[f]]
    for name in changed:
        setattr(version, name, merged[name])
    version.full_clean(exclude=["workflow", "created_by", "approved_by"])
    if changed:
        _save(version, actor, reason, update_fields=[*changed, "updated_at"])
    version_note_changed(version=version, actor=actor, reason=reason)
    return version


# --------------------------------------------------------------------------- undo


def version_snapshot(*, version: WorkflowVersion) -> dict:
    """The draft's settings, steps (with their ids and positions) and edges: what undo restores."""
    return {
        "settings": {f: getattr(version, f) for f in SETTINGS},
        "steps": [{"id": s.pk, "key": s.key, "kind": s.kind, "name": s.name, "config": s.config, "x": s.x, "y": s.y}
                  for s in Step.objects.filter(version=version).order_by("id")],
        "edges": sorted(([e.source.key, e.outcome, e.target.key]
                         for e in Edge.objects.filter(version=version).select_related("source", "target")),
                        key=lambda e: (e[0], e[1])),
    }


_digest = edit_token


def draft_fingerprint(*, version: WorkflowVersion) -> str:
    """The draft as it is now (settings, steps with their positions, edges): the token the
    canvas's drawing carries, so that a change made on an older drawing is refused."""
    return snapshot_fingerprint(version_snapshot(version=version))


def step_fingerprint(*, step: Step) -> str:
    """What a step's form edits (key, kind, name, settings), as stored: the token its side-panel
    form carries, and its page's (`step_save(loaded=...)`). Moving the step or connecting it does
    not change it."""
    return step_token(step=step)


def settings_fingerprint(*, version: WorkflowVersion) -> str:
    """The trigger and entry settings as stored: the token the start node's form carries."""
    return _digest({f: getattr(version, f) for f in SETTINGS})


def snapshot_fingerprint(snapshot: dict) -> str:
    """What the draft looks like, whatever its rows' ids (undo re-creates a deleted step as a new row)."""
    content = {**snapshot, "steps": sorted(({k: v for k, v in s.items() if k != "id"} for s in snapshot["steps"]),
                                           key=lambda s: s["key"])}
    return _digest(content)


@transaction.atomic
def version_restore(*, version: WorkflowVersion, snapshot: dict, expected: str, actor: Any = None,
                    reason: str = "", loaded: str = "") -> None:
    """Undo: put the draft back as `snapshot` (taken by `draft_edit` before a change), provided
    the draft is still as that change left it (`expected`) and as the drawing showed it
    (`loaded`, as for `draft_edit`): someone else's later edit is never undone unseen. Steps
    are matched by id, then by key; each restored row records who and why."""
    version, reason = _editing(version, actor, reason)
    now = snapshot_fingerprint(version_snapshot(version=version))
    if loaded and now != loaded:
        raise DraftChanged(DRAWING_CHANGED)
    if now != expected:
        raise ValidationError("the draft changed after your last change (another edit, perhaps by someone "
                              "else); nothing was undone")
    current = list(Step.objects.filter(version=version))
    by_id, by_key = {s.pk: s for s in current}, {s.key: s for s in current}
    wanted = snapshot["steps"]
    wanted_ids = {row["id"] for row in wanted}
    matches: dict[str, Step] = {}  # snapshot key -> the row that becomes it
    for row in wanted:
        step = by_id.get(row["id"])
        if step is None:  # deleted and re-added since: the step now holding the key, unless it is claimed by id
            candidate = by_key.get(row["key"])
            step = candidate if candidate is not None and candidate.pk not in wanted_ids else None
        if step is not None and all(m.pk != step.pk for m in matches.values()):
            matches[row["key"]] = step
    kept: dict[str, Step] = {}
    for edge in Edge.objects.filter(version=version):  # rebuilt below
        _delete(edge, actor, reason)
    for step in current:
        if all(m.pk != step.pk for m in matches.values()):
            _delete(step, actor, reason)
    for step in matches.values():  # free the keys first: two steps may swap keys
        step.key = f"~{step.pk}"
        Step.objects.filter(pk=step.pk).update(key=step.key)
    for row in wanted:
        step = matches.get(row["key"]) or Step(version=version)
        step.key, step.kind, step.name, step.config, step.x, step.y = (
            row["key"], row["kind"], row["name"], row["config"], row["x"], row["y"])
        kept[step.key] = _save(step, actor, reason)
    for source, outcome, target in snapshot["edges"]:
        _save(Edge(version=version, source=kept[source], outcome=outcome, target=kept[target]), actor, reason)
    changed = [f for f, value in snapshot["settings"].items() if getattr(version, f) != value]
    for name in changed:
        setattr(version, name, snapshot["settings"][name])
    if changed:
        _save(version, actor, reason, update_fields=[*changed, "updated_at"])
    version_note_changed(version=version, actor=actor, reason=reason)
