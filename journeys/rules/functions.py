"""The whitelisted functions a rule may call, and the runtime helpers behind them.

Every function lives here so the parser can check names and arity at compile
time and the admin can show the same list as help. Functions treat a missing
value (null) as "unknown": they return null (predicates return false) instead
of failing, mirroring how a missing attribute reads as null.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .context import RuleContext

_NUMBERS = (int, float)  # bool is an int subclass, which is fine for arithmetic
_SEQUENCES = (list, tuple)

# Cost bounds (issue #15): without them one rule could run for minutes (`round(1, -100000000)`
# builds 10**100000000) or allocate gigabytes. With every result bounded and no loops in the
# language, a rule's evaluation time is bounded by its length.
MAX_INT_BITS = 1100  # ~330 digits: beyond any float, far beyond any real amount
MAX_ROUND_DIGITS = 100
MAX_TEXT_LENGTH = 100_000  # characters of text, items of a list, made by one operation
MAX_NUMBER_TEXT = 100  # characters int()/float() will read
MAX_EVENT_QUERIES = 5  # events_in_last calls in one rule (each is a database query)


def _bounded(value: Any) -> Any:
    """`value` if it is within the cost bounds, else a ValueError that names the bound."""
    if type(value) is int and value.bit_length() > MAX_INT_BITS:
        raise ValueError(f"number too large (more than {MAX_INT_BITS * 3 // 10} digits)")
    if isinstance(value, (str, *_SEQUENCES)) and len(value) > MAX_TEXT_LENGTH:
        unit = "characters" if isinstance(value, str) else "items"
        raise ValueError(f"{_type_name(value)} too long (more than {MAX_TEXT_LENGTH:,} {unit})")
    return value


def _type_name(value: object) -> str:
    """Name types the way the rule language does, not the way Python does."""
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "text",
        list: "list",
        tuple: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _expect(fn: str, what: str, value: object) -> TypeError:
    return TypeError(f"{fn}() expects {what}, got {_type_name(value)}")


# --- path and operator helpers used by generated code ---------------------------------------


def get_key(obj: object, key: str) -> object:
    """One `.name` / `["key"]` step: only dicts are indexed, anything else reads as null.

    Never getattr: a rule must not be able to reach Python attributes of objects.
    """
    if isinstance(obj, dict):
        return dict.get(obj, key)
    return None


def get_index(obj: object, index: int) -> object:
    """One `[n]` step: list position (negative counts from the end) or an int dict key."""
    if isinstance(obj, _SEQUENCES):
        return obj[index] if -len(obj) <= index < len(obj) else None
    if isinstance(obj, dict):
        return dict.get(obj, index)
    return None


def multiply(a: Any, b: Any) -> Any:
    """`*` for numbers only: Python's "ab" * 10**9 would let a rule allocate gigabytes."""
    if a is None or b is None:
        return None
    if isinstance(a, _NUMBERS) and isinstance(b, _NUMBERS):
        return _bounded(a * b)
    raise TypeError(f"unsupported operand type(s) for *: '{_type_name(a)}' and '{_type_name(b)}'")


def add(a: Any, b: Any) -> Any:
    """`+` on anything but two numbers (text, lists, dates...): the result is size-bounded."""
    if a is None or b is None:
        return None
    return _bounded(a + b)


def modulo(a: Any, b: Any) -> Any:
    """`%` for numbers only: on text Python's % is printf formatting, not remainder."""
    if a is None or b is None:
        return None
    if isinstance(a, _NUMBERS) and isinstance(b, _NUMBERS):
        return a % b
    raise TypeError(f"unsupported operand type(s) for %: '{_type_name(a)}' and '{_type_name(b)}'")


# --- dates ------------------------------------------------------------------------------------


def _to_datetime(value: object, rt: RuleContext, fn: str) -> dt.datetime | None:
    """Accept what profile data really holds; naive values are read in ctx.now's time zone."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        result = value
    elif isinstance(value, dt.date):
        result = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            result = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{fn}() could not read {value[:60]!r} as an ISO-8601 date") from None
    else:
        raise _expect(fn, "a date, a datetime or ISO-8601 text", value)
    if result.tzinfo is None:
        result = result.replace(tzinfo=rt.now.tzinfo)
    return result


def f_now(rt: RuleContext) -> dt.datetime:
    return rt.now


def f_today(rt: RuleContext) -> dt.date:
    return rt.now.date()


def f_days_since(rt: RuleContext, value: object) -> float | None:
    moment = _to_datetime(value, rt, "days_since")
    return None if moment is None else (rt.now - moment).total_seconds() / 86400.0


def f_hours_since(rt: RuleContext, value: object) -> float | None:
    moment = _to_datetime(value, rt, "hours_since")
    return None if moment is None else (rt.now - moment).total_seconds() / 3600.0


def f_days_until(rt: RuleContext, value: object) -> float | None:
    moment = _to_datetime(value, rt, "days_until")
    return None if moment is None else (moment - rt.now).total_seconds() / 86400.0


def f_datetime(rt: RuleContext, value: object) -> dt.datetime | None:
    return _to_datetime(value, rt, "datetime")


def f_date(rt: RuleContext, value: object) -> dt.date | None:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    moment = _to_datetime(value, rt, "date")
    return None if moment is None else moment.astimezone(rt.now.tzinfo).date()


def f_events_in_last(
    rt: RuleContext, name: object, days: object = None, hours: object = None
) -> int | None:
    """Ask the engine how often `name` happened recently; 0 when it gave us no way to ask."""
    if not isinstance(name, str):
        raise _expect("events_in_last", "an event name (text)", name)
    amount = days if days is not None else hours
    if amount is None:
        return None
    if isinstance(amount, bool) or not isinstance(amount, _NUMBERS):
        raise _expect("events_in_last", "a number of days or hours", amount)
    counter = rt.events_in_last
    if counter is None:
        return 0
    delta = dt.timedelta(days=amount) if days is not None else dt.timedelta(hours=amount)
    return counter(name, rt.now - delta)


# --- text, lists, numbers -----------------------------------------------------------------------


def f_lower(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _expect("lower", "text", value)
    return value.lower()


def f_upper(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _expect("upper", "text", value)
    return value.upper()


def f_contains(haystack: object, needle: object) -> bool:
    if haystack is None:
        return False
    if isinstance(haystack, str):
        if needle is None:
            return False
        if not isinstance(needle, str):
            raise TypeError(f"contains() on text needs text to look for, got {_type_name(needle)}")
        return needle in haystack
    if isinstance(haystack, (*_SEQUENCES, dict)):
        try:
            return needle in haystack
        except TypeError:  # unhashable needle against a dict: it cannot be a key
            return False
    raise _expect("contains", "text or a list", haystack)


def f_starts_with(value: object, prefix: object) -> bool:
    if value is None or prefix is None:
        return False
    if not isinstance(value, str) or not isinstance(prefix, str):
        raise TypeError(
            f"starts_with() expects text, got {_type_name(value)} and {_type_name(prefix)}"
        )
    return value.startswith(prefix)


def f_ends_with(value: object, suffix: object) -> bool:
    if value is None or suffix is None:
        return False
    if not isinstance(value, str) or not isinstance(suffix, str):
        raise TypeError(
            f"ends_with() expects text, got {_type_name(value)} and {_type_name(suffix)}"
        )
    return value.endswith(suffix)


def f_len(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, (str, *_SEQUENCES, dict)):
        return len(value)
    raise _expect("len", "text, a list or an object", value)


def _number(fn: str, value: object) -> int | float:
    if not isinstance(value, _NUMBERS):
        raise _expect(fn, "a number", value)
    return value


def f_abs(value: object) -> int | float | None:
    return None if value is None else abs(_number("abs", value))


def _extreme(pick: Callable[..., Any], args: tuple[object, ...]) -> object:
    items = args[0] if len(args) == 1 and isinstance(args[0], _SEQUENCES) else args
    present = [item for item in items if item is not None]
    return pick(present) if present else None


def f_min(*args: object) -> object:
    """Smallest present value; nulls are skipped so a missing attribute does not poison it."""
    return _extreme(min, args)


def f_max(*args: object) -> object:
    return _extreme(max, args)


def f_round(value: object, ndigits: object = None) -> int | float | None:
    if value is None:
        return None
    number = _number("round", value)
    if ndigits is None:
        return round(number)
    if isinstance(ndigits, bool) or not isinstance(ndigits, int):
        raise _expect("round", "a whole number of digits", ndigits)
    if not -MAX_ROUND_DIGITS <= ndigits <= MAX_ROUND_DIGITS:
        raise ValueError(f"round() digits must be between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}")
    return round(number, ndigits)


def f_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, _NUMBERS):
        return _bounded(int(value))
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_TEXT:
            raise ValueError(f"int() reads at most {MAX_NUMBER_TEXT} characters")
        try:
            return _bounded(int(value))
        except ValueError:
            pass
        try:
            return int(float(value))  # "3.5" -> 3, as people expect from int()
        except ValueError:
            raise ValueError(f"int() could not read {value[:60]!r} as a number") from None
    raise _expect("int", "a number or text", value)


def f_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, _NUMBERS):
        return float(value)
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_TEXT:
            raise ValueError(f"float() reads at most {MAX_NUMBER_TEXT} characters")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"float() could not read {value[:60]!r} as a number") from None
    raise _expect("float", "a number or text", value)


def f_str(value: object) -> str | None:
    """Text form using the rule language's spelling (true/false, JSON for lists/objects)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (*_SEQUENCES, dict)):
        return _bounded(json.dumps(value, default=str, ensure_ascii=False))
    return str(value)


def f_coalesce(*args: object) -> object:
    for arg in args:
        if arg is not None:
            return arg
    return None


def f_exists(value: object) -> bool:
    return value is not None


# --- registry ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """What the compiler needs to know to check and emit a call."""

    name: str
    impl: Callable[..., Any]
    help: str
    min_args: int
    max_args: int | None  # None: any number
    kwargs: tuple[str, ...] = ()
    needs_context: bool = False  # impl takes the RuleContext first
    exactly_one_kwarg: bool = False  # e.g. events_in_last(days=...) xor (hours=...)


_SPECS = [
    FunctionSpec(
        "now", f_now, "now(): the current moment (the engine's clock)", 0, 0, needs_context=True
    ),
    FunctionSpec("today", f_today, "today(): the current date", 0, 0, needs_context=True),
    FunctionSpec(
        "days_since",
        f_days_since,
        "days_since(x): days (with fraction) from x until now; x is a date, datetime "
        "or ISO-8601 text; null if x is missing",
        1,
        1,
        needs_context=True,
    ),
    FunctionSpec(
        "hours_since",
        f_hours_since,
        "hours_since(x): hours (with fraction) from x until now; null if x is missing",
        1,
        1,
        needs_context=True,
    ),
    FunctionSpec(
        "days_until",
        f_days_until,
        "days_until(x): days (with fraction) from now until x; null if x is missing",
        1,
        1,
        needs_context=True,
    ),
    FunctionSpec(
        "date",
        f_date,
        "date(x): x (a datetime or ISO-8601 text) as a date",
        1,
        1,
        needs_context=True,
    ),
    FunctionSpec(
        "datetime",
        f_datetime,
        "datetime(x): ISO-8601 text as a datetime, comparable with now()",
        1,
        1,
        needs_context=True,
    ),
    FunctionSpec("lower", f_lower, "lower(s): text in lower case", 1, 1),
    FunctionSpec("upper", f_upper, "upper(s): text in upper case", 1, 1),
    FunctionSpec(
        "contains",
        f_contains,
        "contains(haystack, needle): needle is part of the text, or an item of the list",
        2,
        2,
    ),
    FunctionSpec(
        "starts_with", f_starts_with, "starts_with(s, prefix): s begins with prefix", 2, 2
    ),
    FunctionSpec("ends_with", f_ends_with, "ends_with(s, suffix): s ends with suffix", 2, 2),
    FunctionSpec("len", f_len, "len(x): length of text, a list or an object", 1, 1),
    FunctionSpec("abs", f_abs, "abs(n): absolute value", 1, 1),
    FunctionSpec(
        "min", f_min, "min(a, b, ...) or min(list): smallest value, nulls skipped", 1, None
    ),
    FunctionSpec(
        "max", f_max, "max(a, b, ...) or max(list): largest value, nulls skipped", 1, None
    ),
    FunctionSpec("round", f_round, "round(n) or round(n, digits): rounded number", 1, 2),
    FunctionSpec("int", f_int, 'int(x): whole number from a number or text ("3.5" -> 3)', 1, 1),
    FunctionSpec("float", f_float, "float(x): number from a number or text", 1, 1),
    FunctionSpec("str", f_str, "str(x): x as text", 1, 1),
    FunctionSpec(
        "coalesce", f_coalesce, "coalesce(a, b, ...): the first value that is not null", 1, None
    ),
    FunctionSpec("exists", f_exists, "exists(x): x is present (not null)", 1, 1),
    FunctionSpec(
        "events_in_last",
        f_events_in_last,
        "events_in_last(name, days=N) or events_in_last(name, hours=N): how many "
        "events called name this person sent in that window",
        1,
        1,
        kwargs=("days", "hours"),
        needs_context=True,
        exactly_one_kwarg=True,
    ),
]

SPECS: dict[str, FunctionSpec] = {spec.name: spec for spec in _SPECS}

FUNCTIONS: dict[str, str] = {spec.name: spec.help for spec in _SPECS}
"""Function name -> one-line help, for the admin's rule editor."""
