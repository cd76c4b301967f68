"""The value model: each operand is a list of alternatives, one per runtime type it may have."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Protocol

from .outcomes import State, negation

# Runtime types of a value on a row, as Python sees them.
NULL, BOOL, INT, FLOAT, STR, LIST, DICT = "null", "bool", "int", "float", "str", "list", "dict"
TS, DATE, PROFILE = "datetime", "date", "profile"  # the whole profile dict: `'k' in profile`
ERR, UNK = "raises", "unknown"
NUMBERS = frozenset({BOOL, INT, FLOAT})
EXACT_INT = 2**53  # integers up to this convert to float exactly
NOT_CONST = object()  # Alt.const when the value is not known at compile time


class NotTranslatable(Exception):
    """The rule has a part without an exact SQL equivalent: evaluate it in Python."""


@dataclass(frozen=True, slots=True)
class Alt:
    """One runtime type a value may have: where it applies (`cond`, SQL boolean, never
    NULL, never failing; None = always) and its value there (`expr`, SQL of the type's
    column type: boolean, numeric, float8, text, jsonb, timestamptz, date).

    The alternatives of a value exclude each other and together cover every row. `expr`
    may fail in PostgreSQL on rows outside `cond`, so it is only used under it, except
    text (STR) expressions, which never fail.
    """

    cat: str
    cond: str | None = None
    expr: str = ""
    const: object = NOT_CONST
    # For a JSON value: cond is `switch = 'label' [AND sub]`, so a CASE over several
    # alternatives can read the JSON type once (`CASE switch WHEN 'label' ...`).
    switch: str | None = None
    label: str | None = None
    sub: str | None = None


@dataclass(frozen=True, slots=True)
class Val:
    alts: tuple[Alt, ...]
    json: str | None = None  # set when the whole value is this jsonb expression


class Builder(Protocol):
    """What a ProfileSource may ask of the translator (the Translator is one)."""

    def param(self, value: object, cast: str) -> str: ...  # a bound parameter, cast

    def jsonb(self, expr: str, text: str | None = None) -> Val: ...  # a JSON value of the row

    def now_sql(self) -> str: ...  # the clock, as a parameter


class ProfileSource(Protocol):
    """How `profile.<key>` reads on the table (the first key; the rest are JSON steps)."""

    keys: frozenset[str]  # names always present in the profile besides the stored traits

    def traits(self) -> str: ...  # SQL of the stored traits (jsonb object)

    def attribute(self, key: str, tr: Builder) -> Val: ...

    # SQL: the row's events named `name` since `since` (`floor`: SQL of the lowest event id that can be one)
    def event_count(self, name: str, since: str, floor: str | None = None) -> str: ...

    def event_first(self, name: str, since: str, floor: str | None = None) -> str: ...  # the first one's timestamp

    def elapsed(self, key: str, tr: Builder) -> str: ...  # SQL: days before rounding, of a whole-day attribute


@dataclass(frozen=True, slots=True)
class Translation:
    """A rule as SQL over one row: `state` gives the set of outcomes (T alone: selected;
    with T among others: evaluate that row in Python; without T: not selected).

    `joins` are LATERAL joins the state reads (computed once per row); `params` are
    named (`%(p0)s`), for a DB-API cursor. `prefilter`, when set, is a cheap condition
    every selected row meets (JSON containment on the stored traits, which a GIN index
    can answer): add it to the WHERE clause to skip most rows before the state.
    """

    text: str
    state: State
    params: dict[str, object]
    joins: tuple[str, ...]
    prefilter: str | None = None
    # When asked for: SQL (timestamptz) of the earliest moment the row's answer may change with
    # time alone (its data unchanged); None where it never does (journeys.rules.sql.due).
    due: str | None = None

    @property
    def constant(self) -> int | None:
        return self.state if isinstance(self.state, int) else None


def to_number(name: str, a: Alt) -> list[Alt]:
    """functions.f_int / f_float on one alternative. Text goes to Python: its int() and
    float() read forms ("1_000", " 7 ", "٣") that SQL casts do not."""
    if a.cat == NULL:
        return [Alt(NULL)]
    if a.cat == STR:
        return [Alt(UNK)]
    if a.cat not in NUMBERS:
        return [Alt(ERR)]
    kind, expr, _ = number_view(a)
    if name == "float":
        if kind == "float":
            return [Alt(FLOAT, None, expr)]
        fits = f"abs({expr}) < 1e308"  # beyond, Python's float() raises OverflowError
        return [Alt(FLOAT, fits, f"({expr})::float8"), Alt(UNK, negation(fits))]
    if kind == "int":
        return [Alt(INT, None, expr)]
    # float8 -> numeric keeps 15 digits: exact for the whole numbers below 1e15.
    fits = f"abs({expr}) < 1e15"
    return [Alt(INT, fits, f"trunc({expr})::numeric"), Alt(UNK, negation(fits))]


def number_view(a: Alt) -> tuple[str, str, object]:
    """(kind "int"/"float", SQL numeric or float8, constant value or NOT_CONST)."""
    if a.cat == BOOL:
        const = int(a.const) if a.const is not NOT_CONST else NOT_CONST  # type: ignore[call-overload]
        return "int", f"(({a.expr})::int)::numeric", const
    return ("int" if a.cat == INT else "float"), a.expr, a.const


def json_literal(value: object) -> str:
    def check(v: object) -> None:
        if isinstance(v, float) and not math.isfinite(v):
            raise NotTranslatable("a list with an infinite number")
        if isinstance(v, str) and "\x00" in v:
            raise NotTranslatable("text with a NUL character")
        if isinstance(v, list):
            for item in v:
                check(item)

    check(value)
    return json.dumps(value, ensure_ascii=False)
