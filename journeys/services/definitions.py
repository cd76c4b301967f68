"""A version's portable definition: its settings, steps and edges as plain data.

What export writes and `version_build` reads, what fingerprints, diffs and reviews compare.
On its own so that the lifecycle (`workflows`) and governance (diffs, fingerprints, warnings)
both read it and neither imports the other's module for it (workflows -> governance only).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_slug

from journeys.models import BusinessUnit, Edge, Step, Workflow, WorkflowVersion

MAX_COORDINATE = 100_000  # a canvas position further out is a mistake, not a drawing
VERSION_FIELDS = (
    "trigger_kind", "trigger_event", "trigger_config", "entry_rule", "reentry_policy", "reentry_cooldown_s",
    "allow_concurrent_runs", "goal_event", "goal_filter", "entry_step", "notes",
)


def version_definition(*, version: WorkflowVersion) -> dict:
    """The portable form of a version (what export writes and version_build reads)."""
    return {
        **{f: getattr(version, f) for f in VERSION_FIELDS},
        # Only when set: versions without business hours keep their definition (and fingerprint).
        **({"business_hours": version.business_hours} if version.business_hours else {}),
        "steps": [
            {"key": s.key, "kind": s.kind, "name": s.name, "config": s.config, "x": s.x, "y": s.y}
            for s in version.steps.order_by("id")
        ],
        "edges": [
            {"from": e.source.key, "outcome": e.outcome, "to": e.target.key}
            for e in version.edges.select_related("source", "target").order_by("id")
        ],
    }


# --------------------------------------------------------------------------- reading one (import, new drafts)


def _refuse(path: str, message: str) -> None:
    raise ValidationError({path: message})


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _limit(model: type, name: str) -> int | None:
    return model._meta.get_field(name).max_length


def _text(value: Any, path: str, limit: int | None = None) -> str:
    """Text (absent or null: empty), no longer than the field that stores it holds."""
    if value is None:
        return ""
    if not isinstance(value, str):
        _refuse(path, f"must be text, not {type(value).__name__}")
    if limit is not None and len(value) > limit:
        _refuse(path, f"must be at most {limit} characters (it has {len(value)})")
    return value


def _slug(value: str, path: str, what: str, example: str) -> None:
    try:
        validate_slug(value)
    except ValidationError:
        _refuse(path, f"{_shown(value)} is not {what}: letters, digits, - and _ only, e.g. {example}")


def _integer(data: dict, key: str, path: str, low: int, high: int) -> int:
    value = data.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        _refuse(path, f"must be an integer, not {_shown(value)}")
    if not low <= value <= high:
        _refuse(path, f"must be an integer from {low} to {high}")
    return value


def _object(value: Any, path: str, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _refuse(path, f"must be a JSON object ({what})")
    return value


def _list(value: Any, path: str, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        _refuse(path, f"must be a JSON list ({what})")
    return value


def definition_read(definition: Any) -> dict:
    """A definition (the export's `version`) with every value of the type and size its field
    holds, or ValidationError naming its path in the document (`steps[0].x: must be an integer`):
    nothing is coerced (bool("false") is true, str({...}) is not the notes). What the values
    mean (trigger settings, rules, step configs, edges' outcomes) `version_build` checks next."""
    data = _object(definition, "version", "the version's settings, steps and edges")
    read = {name: _text(data.get(name), name, _limit(WorkflowVersion, name)) for name in (
        "trigger_kind", "trigger_event", "entry_rule", "reentry_policy", "goal_event", "goal_filter", "entry_step",
        "notes")}
    read["trigger_config"] = data.get("trigger_config")  # trigger_clean says what is wrong with it
    read["reentry_cooldown_s"] = _integer(data, "reentry_cooldown_s", "reentry_cooldown_s", 0, 2_147_483_647)
    concurrent = data.get("allow_concurrent_runs", False)
    if not isinstance(concurrent, bool):
        _refuse("allow_concurrent_runs", f"must be true or false, not {_shown(concurrent)}")
    read["allow_concurrent_runs"] = concurrent
    read["business_hours"] = data.get("business_hours")
    read["steps"] = []
    for i, raw in enumerate(_list(data.get("steps"), "steps", "of step objects")):
        path = f"steps[{i}]"
        raw = _object(raw, path, "a step: key, kind, name, config, x, y")
        key = _text(raw.get("key"), f"{path}.key", _limit(Step, "key"))
        if not key:
            _refuse(f"{path}.key", "every step needs a key, e.g. send_email")
        _slug(key, f"{path}.key", "a step key", "send_email")
        read["steps"].append({
            "key": key, "kind": _text(raw.get("kind"), f"{path}.kind"),
            "name": _text(raw.get("name"), f"{path}.name", _limit(Step, "name")),
            "config": _object(raw.get("config"), f"{path}.config", "the step's settings"),
            "x": _integer(raw, "x", f"{path}.x", -MAX_COORDINATE, MAX_COORDINATE),
            "y": _integer(raw, "y", f"{path}.y", -MAX_COORDINATE, MAX_COORDINATE),
        })
    read["edges"] = []
    for i, raw in enumerate(_list(data.get("edges"), "edges", "of edge objects")):
        path = f"edges[{i}]"
        raw = _object(raw, path, 'an edge: {"from": step key, "outcome": ..., "to": step key}')
        read["edges"].append({"from": _text(raw.get("from"), f"{path}.from"),
                              "outcome": _text(raw.get("outcome", "next"), f"{path}.outcome", _limit(Edge, "outcome")),
                              "to": _text(raw.get("to"), f"{path}.to")})
    return read


def workflow_meta_read(meta: Any) -> dict:
    """The export's `workflow` part (name, description, business unit's slug), read like a definition."""
    meta = _object(meta, "workflow", "name, description, business_unit")
    read = {"name": _text(meta.get("name"), "workflow.name", _limit(Workflow, "name")),
            "description": _text(meta.get("description"), "workflow.description"),
            "business_unit": _text(meta.get("business_unit"), "workflow.business_unit", _limit(BusinessUnit, "slug"))}
    if read["business_unit"]:
        _slug(read["business_unit"], "workflow.business_unit", "a business unit's slug", "retention")
    return read
