"""The event catalog (tracking plan): schema checks at ingestion and the drift report."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db.models import Count, Max
from django.utils import timezone
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from journeys.errors import EventValidationError
from journeys.models import Event
from journeys.models.catalog import EventDefinition

_cache: dict = {"at": 0.0, "validators": {}}
_lock = threading.Lock()
CACHE_S = 5.0


def schema_check(schema: dict) -> str | None:
    """An error message if `schema` is not a valid JSON Schema (shown at save time)."""
    try:
        Draft202012Validator.check_schema(schema or {})
    except SchemaError as exc:
        return exc.message
    return None


def _validators() -> dict[str, Draft202012Validator]:
    """Compiled validators by event name, refreshed every few seconds (definitions change rarely)."""
    now = time.monotonic()
    if now - _cache["at"] > CACHE_S:
        with _lock:
            _cache["validators"] = {
                name: Draft202012Validator(schema)
                for name, schema in EventDefinition.objects.exclude(schema={}).values_list("name", "schema")
                if schema_check(schema) is None
            }
            _cache["at"] = now
    return _cache["validators"]


def catalog_reset() -> None:
    _cache["at"] = 0.0


def event_violations(*, name: str, properties: dict) -> list[str]:
    """Schema problems of one event's properties, each naming the property path."""
    validator = _validators().get(name)
    if validator is None:
        return []
    problems = []
    for error in sorted(validator.iter_errors(properties), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in error.path)
        problems.append(f"properties{'.' + path if path else ''}: {error.message}")
    return problems


def catalog_split(*, policy: str, events: list, strict: bool = True) -> tuple[list, list]:
    """Check parsed track events against the catalog under a source's policy; returns (kept, refused).

    reject: a breaking event is refused with an EventValidationError naming its first bad
    property; strict raises it (nothing of the request is stored), otherwise it is returned in
    `refused` (for the quarantine). flag: the violations are recorded on the event. accept: nothing.
    """
    if policy == "accept" or not _validators():
        return events, []
    kept, refused = [], []
    for event in events:
        problems = event_violations(name=event.name, properties=event.properties) if event.type == "track" else []
        if not problems:
            kept.append(event)
            continue
        if policy == "reject":
            where = problems[0].split(":", 1)[0]
            prefix = event.extra.get("prefix", "")
            error = EventValidationError(problems[0].split(": ", 1)[1], field=f"{prefix}.{where}" if prefix else where)
            if strict:
                raise error
            refused.append((event, error))
            continue
        event.extra["violations"] = problems
        kept.append(event)
    return kept, refused


def catalog_apply(*, policy: str, events: list) -> None:
    """All or nothing: under the `reject` policy the first breaking event raises (a 400 naming it)."""
    catalog_split(policy=policy, events=events, strict=True)


@dataclass
class CatalogRow:
    name: str
    count: int
    last_seen: object
    known: bool
    flagged: int


REPORT_DAYS = (1, 90)  # the report reads every event received in its period: at most a quarter


def catalog_report_days(value: object) -> int:
    """The report's period as asked for (`?days=`), or a ValidationError on `days` saying what is allowed."""
    low, high = REPORT_DAYS
    try:
        days = int(str(value).strip())
    except ValueError:
        days = None
    if days is None or not low <= days <= high:
        raise ValidationError({"days": f"must be a whole number of days from {low} to {high}, not {str(value)[:40]!r}"})
    return days


def catalog_report(*, days: int = 7) -> list[CatalogRow]:
    """Events seen in the last N days (1 to 90) that are unknown to the catalog or break their schema."""
    days = catalog_report_days(days)
    since = timezone.now() - timedelta(days=days)
    known = set(EventDefinition.objects.values_list("name", flat=True))
    rows = (
        Event.objects.filter(type="track", received_at__gte=since)
        .exclude(source__name="internal")
        .values("name")
        .annotate(count=Count("id"), last_seen=Max("received_at"))
    )
    flagged = dict(
        Event.objects.filter(type="track", received_at__gte=since)
        .exclude(violations=[])
        .values_list("name")
        .annotate(n=Count("id"))
    )
    report = [
        CatalogRow(r["name"], r["count"], r["last_seen"], r["name"] in known, flagged.get(r["name"], 0))
        for r in rows
        if r["name"] not in known or flagged.get(r["name"])
    ]
    return sorted(report, key=lambda r: (-r.count, r.name))


def catalog_names() -> list[str]:
    """Event names for autocomplete in the rule editor and step forms."""
    return list(EventDefinition.objects.values_list("name", flat=True))


def catalog_property_known(*, event_name: str, path: str) -> bool | None:
    """Is `event.properties.<path>` declared for this event? None when the event has no schema."""
    definition = EventDefinition.objects.filter(name=event_name).first()
    if definition is None or not definition.schema.get("properties"):
        return None
    return path.split(".")[0] in definition.schema["properties"]
