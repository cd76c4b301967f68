"""Validate one Segment-style event payload and normalise it.

Pure functions: nothing here touches the database, so a batch is fully
validated before anything of it is stored.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from journeys.choices import EventType
from journeys.errors import EventValidationError, PayloadTooLarge

MAX_ID_LENGTH = 255
_TYPES = {t.value for t in EventType}


@dataclass(slots=True)
class ParsedEvent:
    type: str
    message_id: str
    name: str
    user_id: str
    anonymous_id: str
    previous_id: str
    group_id: str
    properties: dict
    traits: dict
    context: dict
    integrations: dict
    timestamp: datetime
    original_timestamp: datetime | None
    sent_at: datetime | None
    received_at: datetime
    extra: dict = field(default_factory=dict)


def _where(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def parse_timestamp(value: Any, *, field_name: str) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventValidationError("must be an ISO-8601 date-time string", field=field_name)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise EventValidationError(
            f"cannot parse {value[:40]!r} as an ISO-8601 date-time", field=field_name
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt_timezone.utc)
    try:
        # Stored in UTC: PostgreSQL refuses offsets beyond +-15:59 that ISO-8601 allows.
        return parsed.astimezone(dt_timezone.utc)
    except OverflowError:
        raise EventValidationError(f"{value[:40]!r} is out of range", field=field_name) from None


def _optional_id(raw: dict, key: str, prefix: str) -> str:
    value = raw.get(key)
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EventValidationError("must be a string or a number", field=_where(prefix, key))
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise EventValidationError(f"is longer than {MAX_ID_LENGTH} characters", field=_where(prefix, key))
    return text


def _object(raw: dict, key: str, prefix: str) -> dict:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventValidationError("must be a JSON object", field=_where(prefix, key))
    return value


def check_finite_numbers(value: Any, *, field: str) -> None:
    """Reject NaN and infinite numbers anywhere in `value`, naming where the first one sits.

    The body parser refuses the literals NaN and Infinity, but a number such as 1e999
    overflows to infinity on parsing; no JSON column can store it (PostgreSQL refuses the
    whole insert, SQLite's JSON check fails), so it is the client's error, not a retryable one.
    """
    stack: list[tuple[str, Any]] = [(field, value)]
    while stack:  # iterative: a deeply nested (but parsable) body must not overflow the stack
        path, node = stack.pop()
        if isinstance(node, float):
            if not math.isfinite(node):
                raise EventValidationError(
                    "is not a finite number (JSON numbers must lie within +-1.8e308)", field=path or "body"
                )
        elif isinstance(node, dict):
            stack.extend(reversed([(_where(path, str(k)), v) for k, v in node.items()]))
        elif isinstance(node, list):
            stack.extend(reversed([(f"{path}[{i}]", v) for i, v in enumerate(node)]))


def check_event_size(raw: dict, *, max_bytes: int, prefix: str) -> None:
    """Enforce the per-event size and reject what PostgreSQL cannot store.

    One serialisation does four jobs: the size, lone surrogates (which cannot
    be encoded as UTF-8), non-finite numbers (`allow_nan=False`; the slower walk
    that names the field runs only then) and NUL characters (which jsonb refuses).
    """
    try:
        text = json.dumps(raw, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        check_finite_numbers(raw, field=prefix)
        raise
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise EventValidationError("contains text that is not valid Unicode", field=prefix or "body") from None
    if len(encoded) > max_bytes:
        raise PayloadTooLarge(
            f"event is {len(encoded)} bytes; the limit is {max_bytes} bytes", field=prefix or "body"
        )
    if b"\\u0000" in encoded or b"\x00" in encoded:
        raise EventValidationError("NUL characters (\\u0000) are not allowed", field=prefix or "body")


def parse_event(
    raw: Any,
    *,
    received_at: datetime,
    event_type: str | None = None,
    prefix: str = "",
    defaults: dict | None = None,
) -> ParsedEvent:
    """Validate one event. `event_type` is fixed by the endpoint, else read from `type`.

    `defaults` carries batch-level `context`, `integrations` and `sentAt`; the
    event's own keys win inside each object.
    """
    if not isinstance(raw, dict):
        raise EventValidationError("must be a JSON object", field=prefix or "body")
    kind = event_type or raw.get("type")
    if not isinstance(kind, str) or kind not in _TYPES:
        if kind is None:
            raise EventValidationError("is required", field=_where(prefix, "type"))
        raise EventValidationError(
            f"unknown type {str(kind)[:40]!r}; expected one of {', '.join(sorted(_TYPES))}",
            field=_where(prefix, "type"),
        )

    user_id = _optional_id(raw, "userId", prefix)
    anonymous_id = _optional_id(raw, "anonymousId", prefix)
    previous_id = _optional_id(raw, "previousId", prefix)
    group_id = _optional_id(raw, "groupId", prefix)
    if not user_id and not anonymous_id:
        raise EventValidationError("userId or anonymousId is required", field=_where(prefix, "userId"))

    name = ""
    if kind == EventType.TRACK:
        name = raw.get("event")
        if name is None or name == "":
            raise EventValidationError("is required for track events", field=_where(prefix, "event"))
        if not isinstance(name, str):
            raise EventValidationError("must be a string", field=_where(prefix, "event"))
        if len(name) > MAX_ID_LENGTH:
            raise EventValidationError(f"is longer than {MAX_ID_LENGTH} characters", field=_where(prefix, "event"))
    elif kind in (EventType.PAGE, EventType.SCREEN):
        name = raw.get("name") or ""
        if not isinstance(name, str) or len(name) > MAX_ID_LENGTH:
            raise EventValidationError("must be a string of at most 255 characters", field=_where(prefix, "name"))
    elif kind == EventType.ALIAS and not previous_id:
        raise EventValidationError("is required for alias events", field=_where(prefix, "previousId"))
    elif kind == EventType.GROUP and not group_id:
        raise EventValidationError("is required for group events", field=_where(prefix, "groupId"))

    message_id = raw.get("messageId")
    if message_id is None or message_id == "":
        message_id = f"jc-{uuid.uuid4()}"
    elif not isinstance(message_id, (str, int)) or isinstance(message_id, bool):
        raise EventValidationError("must be a string", field=_where(prefix, "messageId"))
    message_id = str(message_id)
    if len(message_id) > MAX_ID_LENGTH:
        raise EventValidationError(f"is longer than {MAX_ID_LENGTH} characters", field=_where(prefix, "messageId"))

    properties = _object(raw, "properties", prefix)
    traits = _object(raw, "traits", prefix)
    context = _object(raw, "context", prefix)
    integrations = _object(raw, "integrations", prefix)
    if kind == EventType.IDENTIFY and not traits:
        # analytics.js puts identify traits in context.traits for some calls.
        traits = context.get("traits") if isinstance(context.get("traits"), dict) else {}
    if defaults:
        if defaults.get("context"):
            context = {**defaults["context"], **context}
        if defaults.get("integrations"):
            integrations = {**defaults["integrations"], **integrations}

    timestamp = parse_timestamp(raw.get("timestamp"), field_name=_where(prefix, "timestamp"))
    original = parse_timestamp(raw.get("originalTimestamp"), field_name=_where(prefix, "originalTimestamp"))
    sent_raw = raw.get("sentAt", (defaults or {}).get("sentAt"))
    sent_at = parse_timestamp(sent_raw, field_name=_where(prefix, "sentAt"))

    # Clock-skew correction as Segment does it: the client's clock may be off,
    # but the gap between "happened" and "sent" is measured on that same clock.
    client_ts = timestamp or original
    if client_ts is not None and sent_at is not None:
        try:
            corrected = client_ts + (received_at - sent_at)
        except OverflowError:
            raise EventValidationError(
                "timestamp and sentAt are too far apart to correct for clock skew",
                field=_where(prefix, "timestamp" if timestamp else "originalTimestamp"),
            ) from None
    else:
        corrected = client_ts or received_at
    if corrected > received_at + timedelta(minutes=5):
        corrected = received_at  # never in the future: a wrong clock must not delay journeys

    if kind == EventType.PAGE and raw.get("category"):
        properties = {**properties, "category": raw.get("category")}

    return ParsedEvent(
        type=kind,
        message_id=message_id,
        name=name,
        user_id=user_id,
        anonymous_id=anonymous_id,
        previous_id=previous_id,
        group_id=group_id,
        properties=properties,
        traits=traits,
        context=context,
        integrations=integrations,
        timestamp=corrected,
        original_timestamp=client_ts,
        sent_at=sent_at,
        received_at=received_at,
        extra={"prefix": prefix} if prefix else {},
    )
