"""Validate one Segment-style event payload and normalise it.

Pure functions: nothing here touches the database, so a batch is fully
validated before anything of it is stored.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from journeys.choices import EventType
from journeys.errors import EventValidationError, PayloadTooLarge
from journeys.timezones import traits_zone_read

MAX_ID_LENGTH = 255
MAX_DEPTH = 64  # levels of objects and arrays in one event, the event itself being the first
_TYPES = {t.value for t in EventType}
# Top-level fields that have a column (or are the write key, which is never stored); every other
# field the client sent is kept verbatim in Event.other.
KNOWN_FIELDS = frozenset({
    "type", "userId", "anonymousId", "previousId", "groupId", "event", "name", "category", "properties",
    "traits", "context", "integrations", "messageId", "timestamp", "originalTimestamp", "sentAt", "channel",
    "version", "_metadata", "writeKey",
})


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
    channel: str = ""
    version: str = ""
    category: str = ""
    metadata: dict = field(default_factory=dict)
    other: dict = field(default_factory=dict)  # top-level fields without a column of their own
    index: int | None = None  # position in the request's batch
    raw: dict | None = None  # the payload as received (batch defaults merged), for the quarantine
    extra: dict = field(default_factory=dict)


# Before this, a timestamp is a client's unset clock, not a moment (the client's value stays in
# originalTimestamp); the event is dated by its receipt, as one sent without a timestamp.
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=dt_timezone.utc)


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


def _too_deep(value: Any, limit: int) -> bool:
    """Whether objects/arrays nest more than `limit` levels (iterative: never recursion-bound)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
    return False


def _deep_path(value: Any, limit: int, field: str) -> str:
    """The path of the first object/array nested deeper than `limit` (only run once one is)."""
    stack: list[tuple[str, Any, int]] = [(field, value, 1)]
    while stack:
        path, node, depth = stack.pop()
        if depth > limit:
            return path
        items = [(_where(path, str(k)), v) for k, v in node.items()] if type(node) is dict else [
            (f"{path}[{i}]", v) for i, v in enumerate(node)]
        stack.extend((p, v, depth + 1) for p, v in reversed(items) if type(v) in (dict, list))
    return field


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON can store; write a finite number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large a number")
    return number


def json_strict(text: str | bytes, *, finite: bool = False) -> Any:
    """JSON as standard parsers and the database read it: the constants NaN, Infinity and
    -Infinity, which Python's json accepts, are refused (ValueError). With `finite`, numbers that
    overflow to infinity (1e999) are refused too; without, `check_finite_numbers` can later name
    where one sits (the event API does). RecursionError escapes for the caller to report."""
    if finite:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    return json.loads(text, parse_constant=_no_constant)


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def nesting_path(text: str, limit: int = MAX_DEPTH) -> str:
    """Where JSON text first nests deeper than `limit` levels (e.g. `batch[3].properties.a.a`),
    read without parsing it: for a body too deep for the parser itself, so that even that
    answer names the event and field. The top-level object is level 0 here, so `limit`
    levels of an event inside a batch are allowed below `batch[i]`."""
    path: list[Any] = []  # per open container: its key (object) or index (array)
    kinds: list[str] = []
    last_string = None
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] == '"':
            last_string = token
        elif token in "{[":
            kinds.append(token)
            path.append(0 if token == "[" else None)
            if len(kinds) > limit + 1:
                break
        elif token in "}]":
            if kinds:
                kinds.pop()
                path.pop()
        elif token == ":" and kinds and kinds[-1] == "{":
            try:
                path[-1] = json.loads(last_string) if last_string else None
            except ValueError:
                path[-1] = None
        elif token == "," and kinds and kinds[-1] == "[":
            path[-1] += 1
    where = ""
    for kind, step in zip(kinds[:-1], path[:-1]):
        where = f"{where}[{step}]" if kind == "[" else _where(where, str(step))
    return where if len(where) <= 200 else where[:120] + "..." + where[-60:]


def check_depth(value: Any, *, field: str, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit` levels, naming where (pages and rules that read
    stored JSON recursively must never meet what they cannot walk)."""
    if type(value) in (dict, list) and _too_deep(value, limit):
        path = _deep_path(value, limit, field)
        shown = path if len(path) <= 200 else path[:120] + "..." + path[-60:]
        raise EventValidationError(f"is nested more than {limit} levels deep", field=shown or "body", code="too_deep")


# json.dumps writes a NUL as \u0000; a backslash written before it is itself escaped (\\), so a NUL is
# \u0000 after an even number of backslashes, and the six characters \u0000 in a text are \\u0000.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _unstorable_text(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains text that is not valid Unicode (a lone surrogate such as \\ud800)"
    return None


def check_storable_text(value: Any, *, field: str) -> None:
    """Reject NUL characters and lone surrogates in any string or key of `value`, naming where the
    first one sits: PostgreSQL's jsonb and text columns refuse both (the whole insert fails)."""
    stack: list[tuple[str, Any]] = [(field, value)]
    while stack:  # iterative, as check_finite_numbers
        path, node = stack.pop()
        if isinstance(node, str):
            if problem := _unstorable_text(node):
                raise EventValidationError(problem, field=path or "body")
        elif isinstance(node, dict):
            for key in node:
                if problem := _unstorable_text(str(key)):
                    raise EventValidationError(f"a key {problem}", field=path or "body")
            stack.extend(reversed([(_where(path, str(k)), v) for k, v in node.items()]))
        elif isinstance(node, list):
            stack.extend(reversed([(f"{path}[{i}]", v) for i, v in enumerate(node)]))


def json_read_storable(text: str | bytes, *, field: str = "", max_bytes: int = 1024 * 1024) -> Any:
    """JSON a person or a client typed, read so that whatever it holds can be stored and shown
    later. Refused with an EventValidationError naming the field (`field` is the path prefix; ""
    names top-level keys as they are) when it is not JSON, or holds what the event API refuses
    too: NaN, Infinity or a number that overflows (1e999), which Python's json reads but jsonb
    refuses; NUL characters or lone surrogates; nesting deeper than MAX_DEPTH; more than
    `max_bytes` once serialised (PayloadTooLarge). Every reader of typed JSON (admin forms,
    console endpoints, inbound webhooks, commands) uses this, so none answers 500 or stores a row
    that breaks a later read."""
    try:
        value = json.loads(text)  # NaN/Infinity are read, to be refused below with where they are
    except RecursionError:
        inner = nesting_path(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)
        where = field + inner if inner.startswith("[") else _where(field, inner) if inner else field
        raise EventValidationError(f"is nested more than {MAX_DEPTH} levels deep", field=where or "body",
                                   code="too_deep") from None
    except UnicodeDecodeError:
        raise EventValidationError("is not UTF-8 text", field=field or "body") from None
    except ValueError as exc:
        raise EventValidationError(f"is not valid JSON: {exc}", field=field or "body") from None
    check_depth(value, field=field)
    check_finite_numbers(value, field=field)
    check_storable_text(value, field=field)
    check_event_size(value, max_bytes=max_bytes, prefix=field)  # the size (the rest passed above)
    return value


def check_event_size(raw: dict, *, max_bytes: int, prefix: str) -> int:
    """Enforce the nesting cap and the per-event size and reject what PostgreSQL cannot store;
    returns the event's size in bytes.

    The depth walk comes first (iterative, so the serialiser below never meets a structure deep
    enough to exhaust the stack). Then one serialisation does four jobs: the size, lone
    surrogates (which cannot be encoded as UTF-8), non-finite numbers (`allow_nan=False`; the
    slower walk that names the field runs only then) and NUL characters (which jsonb refuses).
    """
    check_depth(raw, field=prefix)
    try:
        text = json.dumps(raw, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        check_finite_numbers(raw, field=prefix)
        raise
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        check_storable_text(raw, field=prefix)  # names where the lone surrogate sits
        raise EventValidationError("contains text that is not valid Unicode", field=prefix or "body") from None
    if len(encoded) > max_bytes:
        raise PayloadTooLarge(
            f"is {len(encoded)} bytes; the limit is {max_bytes} bytes per event", field=prefix or "body"
        )
    if b"\\u0000" in encoded and _NUL_ESCAPE.search(encoded):  # (text that says \u0000 is escaped: \\u0000)
        check_storable_text(raw, field=prefix)  # names where the NUL sits
        raise EventValidationError("contains a NUL character (\\u0000), which cannot be stored", field=prefix or "body")
    return len(encoded)


def _optional_text(raw: dict, key: str, prefix: str, max_length: int) -> str:
    value = raw.get(key)
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise EventValidationError("must be a string", field=_where(prefix, key))
    text = str(value)
    if len(text) > max_length:
        raise EventValidationError(f"is longer than {max_length} characters", field=_where(prefix, key))
    return text


def batch_defaults_check(body: dict, *, max_bytes: int) -> dict:
    """The batch-level `context`, `integrations` and `sentAt` that every event of a batch inherits.

    They are checked as strictly as an event's own fields (objects, depth, finite numbers, NUL,
    lone surrogates, at most one event's size): a bad one affects every event, so it is an
    error of the whole request naming the field, never a quarantine of each event.
    """
    defaults: dict = {}
    for key in ("context", "integrations"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise EventValidationError("must be a JSON object", field=key)
        check_depth(value, field=key, limit=MAX_DEPTH - 1)  # one level below the event once merged
        check_event_size(value, max_bytes=max_bytes, prefix=key)
        if value:
            defaults[key] = value
    sent_at = body.get("sentAt")
    if sent_at not in (None, ""):
        parse_timestamp(sent_at, field_name="sentAt")
        defaults["sentAt"] = sent_at
    return defaults


def event_with_defaults(raw: dict, defaults: dict | None) -> dict:
    """The event as its batch meant it: batch-level `context`/`integrations` under the event's own
    keys (the event's win), `sentAt` when the event has none. An own `context` that is not an
    object is left as sent, for the parser to name."""
    if not defaults:
        return raw
    merged = dict(raw)
    for key in ("context", "integrations"):
        if key in defaults:
            own = raw.get(key)
            if own is None:
                merged[key] = defaults[key]
            elif isinstance(own, dict):
                merged[key] = {**defaults[key], **own}
    if "sentAt" in defaults and raw.get("sentAt") in (None, ""):
        merged["sentAt"] = defaults["sentAt"]
    return merged


def email_problem(value: str) -> str:
    """Why `value` cannot be an email address messages are sent to ("" when it can)."""
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    address = value.strip()
    local, _, domain = address.rpartition("@")
    try:  # an internationalised local part (RFC 6531) is fine; the domain is checked as Django does
        validate_email(address if local.isascii() else f"x@{domain}")
    except ValidationError:
        return "is not an email address"
    return ""


def phone_problem(value: str) -> str:
    """Why `value` cannot be a phone number ("" when it can): `phone_number`, the reading the
    profile and its identity use (separators, `tel:` and an extension allowed), finds none."""
    from journeys.services.identity import phone_number

    if not phone_number(value):
        return ("is not a phone number (digits, with spaces, dashes, dots, slashes, parentheses, "
                "a leading + or tel: and an extension allowed)")
    return ""


def contact_traits_check(traits: dict, *, field: str = "traits") -> list[tuple[str, str]]:
    """An identify's `email` and `phone` traits fill the profile and claim identities messages are
    sent to. An email that cannot be an address rejects the event (the API quarantines it, an
    import rejects its row), naming the field, rather than storing `not-an-email` as someone's
    address. A phone that is not a number is only kept as a trait (`phone_number` gives the
    profile and identities nothing), so the identify and its merge still count: returned as
    (field, why) for the event to record and an import to name."""
    email = traits.get("email")
    if isinstance(email, str) and email.strip() and (why := email_problem(email)):
        raise EventValidationError(why, field=f"{field}.email")
    phone = traits.get("phone")
    if isinstance(phone, str) and phone.strip() and (why := phone_problem(phone)):
        return [(f"{field}.phone", why)]
    return []


def parse_event(
    raw: Any,
    *,
    received_at: datetime,
    event_type: str | None = None,
    prefix: str = "",
) -> ParsedEvent:
    """Validate one event (batch defaults already merged: `event_with_defaults`).
    `event_type` is fixed by the endpoint, else read from `type`."""
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

    name, unreadable = "", []
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
    metadata = _object(raw, "_metadata", prefix)
    traits_field = _where(prefix, "traits")
    if kind == EventType.IDENTIFY and not traits:
        # analytics.js puts identify traits in context.traits for some calls.
        traits = context.get("traits") if isinstance(context.get("traits"), dict) else {}
        traits_field = _where(prefix, "context.traits")
    if kind == EventType.IDENTIFY:
        # the profile's zone and contact points: an email no one can send to is refused, naming
        # the field; a zone or phone no one can read is kept as a trait only and named on the event
        traits, unreadable = traits_zone_read(traits, field=traits_field)
        unreadable += contact_traits_check(traits, field=traits_field)
    category = _optional_text(raw, "category", prefix, MAX_ID_LENGTH)
    channel = _optional_text(raw, "channel", prefix, 64)
    version = _optional_text(raw, "version", prefix, 32)

    timestamp = parse_timestamp(raw.get("timestamp"), field_name=_where(prefix, "timestamp"))
    original = parse_timestamp(raw.get("originalTimestamp"), field_name=_where(prefix, "originalTimestamp"))
    sent_at = parse_timestamp(raw.get("sentAt"), field_name=_where(prefix, "sentAt"))

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
    elif corrected < EARLIEST_TIMESTAMP:
        corrected = received_at  # an unset clock (Go's zero time, the epoch) must not date a profile to year 1

    if kind == EventType.PAGE and category:
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
        # The client's own clock: its originalTimestamp when it sent one (even beside timestamp).
        original_timestamp=original or client_ts,
        sent_at=sent_at,
        received_at=received_at,
        channel=channel,
        version=version,
        category=category,
        metadata=metadata,
        other={k: v for k, v in raw.items() if k not in KNOWN_FIELDS},
        raw=raw,
        extra={**({"prefix": prefix} if prefix else {}), **_unreadable_extra(unreadable)},
    )


# What the profile does instead of using an unreadable trait, by the trait's name.
_KEPT_AS = {"phone": "kept as a trait, not used as the customer's number",
            "timezone": "kept as a trait, not used: the customer keeps the zone they had"}


def _unreadable_extra(unreadable: list[tuple[str, str]]) -> dict:
    """A trait kept but not used (a phone that is not a number, a zone that names none): recorded
    on the Event row as a violation (the events admin shows it) and kept as (field, why) for an
    import to name."""
    if not unreadable:
        return {}
    return {"unreadable": unreadable,
            "violations": [f"{where}: {why}; {_KEPT_AS[where.rsplit('.', 1)[-1]]}" for where, why in unreadable]}
