"""Rules -> PostgreSQL: a segment rule as an expression over one customer row.

The Python compiler (codegen) is the reference: a rule selects exactly the rows it
would select in Python. What Python does is modelled per row as a *set of possible
outcomes* (a small bitmask): F (false), T (true), E (raises, so the rule is false).
A part SQL can decide exactly is one of F, T, E; a part it cannot decide for some row
(a string that only Python's ISO parser may accept, non-ASCII text under lower(),
an integer beyond 2**53 against a float...) is a set with several members, and that
row is evaluated again in Python. `and`, `or` and `not` combine the sets with
Python's short-circuit rules (an error on the left of `and` stops it; `not` keeps
an error an error), so `not (profile.age > 3)` is false, not true, when age is text.

Values are modelled the same way: each operand is a list of alternatives, one per
runtime type it may have on a row (a JSON trait may be null, a boolean, an integer,
a float, text, a list or an object), each with the SQL condition that it applies,
the SQL expression of its value, or "raises" / "unknown". Comparisons are generated
per pair of alternatives with Python's rules for those two types: numbers compare by
value (booleans are 0 and 1; an integer against a float exactly), text by code
point (COLLATE "C"), a type mismatch is false for ==/!= and an error for ordering.

Every value reaches the SQL as a bound parameter; every expression that could fail
in PostgreSQL (a cast, a date) is evaluated only inside the CASE branch that proved
it valid. Rules reading event.*, context.*, journey.*, events_in_last() or functions
without an exact SQL equivalent raise NotTranslatable: the caller evaluates them in
Python. This module does not know the customer table: a `ProfileSource` maps
`profile.<key>` to SQL (journeys.services.segments has the one for customers).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from .compiler import RuleContext, _load
from .nodes import BinOp, BoolOp, Call, Compare, Const, ListExpr, Node, Path, Unary, children
from .parser import parse

# --- outcome sets ---------------------------------------------------------------------------

F, T, E = 1, 2, 4
MAYBE = F | T  # true or false, cannot raise
ANY = F | T | E

State = int | str  # a constant set, or SQL evaluating to one (an integer 1..7)


def set_and(a: int, b: int) -> int:
    """`a and b` (b is only evaluated when a is truthy)."""
    return (a & (F | E)) | (b if a & T else 0)


def set_or(a: int, b: int) -> int:
    return (a & (T | E)) | (b if a & F else 0)


def set_not(a: int) -> int:
    return ((a & F) << 1) | ((a & T) >> 1) | (a & E)


def _table(fn: Callable[[int, int], int]) -> str:
    return "'{" + ",".join(str(fn(a, b)) for a in range(8) for b in range(8)) + "}'::int[]"


_AND_SQL = _table(set_and)
_OR_SQL = _table(set_or)
_NOT_SQL = "'{" + ",".join(str(set_not(a)) for a in range(8)) + "}'::int[]"


def s_and(a: State, b: State) -> State:
    if isinstance(a, int):
        if a == T:
            return b
        if not a & T:
            return a
        if isinstance(b, int):
            return set_and(a, b)
    elif b == T:
        return a
    return f"({_AND_SQL})[({a}) * 8 + ({b}) + 1]"


def s_or(a: State, b: State) -> State:
    if isinstance(a, int):
        if a == F:
            return b
        if not a & F:
            return a
        if isinstance(b, int):
            return set_or(a, b)
    elif b == F:
        return a
    return f"({_OR_SQL})[({a}) * 8 + ({b}) + 1]"


def s_not(a: State) -> State:
    if isinstance(a, int):
        return set_not(a)
    return f"({_NOT_SQL})[({a}) + 1]"


def bool_state(predicate: str) -> str:
    """T where `predicate` holds, else F; the predicate must never be NULL where it is used."""
    return f"(CASE WHEN {predicate} THEN 2 ELSE 1 END)"


# --- values -----------------------------------------------------------------------------------

# Runtime types of a value on a row, as Python sees them.
NULL, BOOL, INT, FLOAT, STR, LIST, DICT = "null", "bool", "int", "float", "str", "list", "dict"
TS, DATE, PROFILE = "datetime", "date", "profile"  # the whole profile dict: `'k' in profile`
ERR, UNK = "raises", "unknown"
NUMBERS = frozenset({BOOL, INT, FLOAT})
EXACT_INT = 2**53  # integers up to this convert to float exactly
_NO = object()  # Alt.const when the value is not known at compile time


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
    const: object = _NO
    # For a JSON value: cond is `switch = 'label' [AND sub]`, so a CASE over several
    # alternatives can read the JSON type once (`CASE switch WHEN 'label' ...`).
    switch: str | None = None
    label: str | None = None
    sub: str | None = None


@dataclass(frozen=True, slots=True)
class Val:
    alts: tuple[Alt, ...]
    json: str | None = None  # set when the whole value is this jsonb expression


class ProfileSource(Protocol):
    """How `profile.<key>` reads on the table (the first key; the rest are JSON steps)."""

    keys: frozenset[str]  # names always present in the profile besides the stored traits

    def traits(self) -> str: ...  # SQL of the stored traits (jsonb object)

    def attribute(self, key: str, tr: Translator) -> Val: ...


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

    @property
    def constant(self) -> int | None:
        return self.state if isinstance(self.state, int) else None


def translate(text: str, *, now: dt.datetime, profile: ProfileSource, prefix: str = "") -> Translation:
    """Translate `text` for rows read at `now` (which must be in UTC: naive ISO text in
    the data is read in now's zone, as the Python evaluator does). `prefix` keeps the
    parameter and join names of several translations in one statement apart.

    Raises RuleSyntaxError for a broken rule and NotTranslatable for one SQL cannot
    answer exactly.
    """
    if now.tzinfo is None or now.utcoffset() != dt.timedelta(0) or str(now.tzinfo) != "UTC":
        raise NotTranslatable("now must be a UTC datetime")
    tree = parse(text).tree
    tr = Translator(now=now, profile=profile, prefix=prefix)
    state = tr.state(tree)
    prefilter = tr.prefilter(tree) if isinstance(state, str) else None
    return Translation(text, state, dict(tr.params), tuple(tr.joins), prefilter)


# --- SQL text helpers -------------------------------------------------------------------------


def _and(*conds: str | None) -> str | None:
    parts = [c for c in conds if c is not None and c != "TRUE"]
    if "FALSE" in parts:
        return "FALSE"
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"


def _guard(cond: str | None, predicate: str) -> str:
    """`cond AND predicate`, with predicate evaluated only where cond holds."""
    if cond is None or cond == "TRUE":
        return predicate
    if cond == "FALSE":
        return "FALSE"
    return f"(CASE WHEN {cond} THEN {predicate} ELSE FALSE END)"


def _not(cond: str | None) -> str:
    if cond is None or cond == "TRUE":
        return "FALSE"
    if cond == "FALSE":
        return "TRUE"
    return f"(NOT {cond})"


def _or(*conds: str | None) -> str:
    if any(c is None or c == "TRUE" for c in conds):
        return "TRUE"
    parts = [c for c in conds if c != "FALSE"]
    if not parts:
        return "FALSE"
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def _c(expr: str) -> str:
    """Text compared by code point, whatever the database's collation."""
    return f'({expr}) COLLATE "C"'


def case(branches: Sequence[tuple[Alt | str | None, State]]) -> State:
    """A state chosen by mutually exclusive, exhaustive alternatives (or conditions).

    Branches equal to the most common constant become the ELSE. Alternatives of one JSON
    value switch on its type once instead of testing it in every branch.
    """
    if len(branches) == 1:
        return branches[0][1]
    ints = Counter(s for _, s in branches if isinstance(s, int))
    default: State = ints.most_common(1)[0][0] if ints else branches[-1][1]
    if all(s == default for _, s in branches):
        return default
    alts = [b for b, _ in branches]
    if all(isinstance(a, Alt) and a.switch is not None for a in alts):
        switch = alts[0].switch  # type: ignore[union-attr]
        if all(a.switch == switch for a in alts):  # type: ignore[union-attr]
            groups: dict[str, list[tuple[Alt, State]]] = {}
            for a, s in branches:
                groups.setdefault(a.label, []).append((a, s))  # type: ignore[union-attr, arg-type]
            whens = []
            for label, items in groups.items():
                if all(s == default for _, s in items):
                    continue
                inner = items[0][1] if len(items) == 1 else case([(a.sub, s) for a, s in items])
                whens.append(f"WHEN '{label}' THEN {inner}")
            return f"(CASE {switch} {' '.join(whens)} ELSE {default} END)"
    rest = []
    for b, s in branches:
        cond = b.cond if isinstance(b, Alt) else b
        if s != default:
            if cond is None:  # pragma: no cover - only single alternatives lack a condition
                raise AssertionError("an alternative without a condition among several")
            rest.append((cond, s))
    whens = " ".join(f"WHEN {c} THEN {s}" for c, s in rest)
    return f"(CASE {whens} ELSE {default} END)"


def _mirror(op: str) -> str:
    return {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "=="}[op]


_SQL_OP = {"==": "=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_PY_OP: dict[str, Callable[[object, object], bool]] = {
    "==": lambda a, b: a == b,
    "<": lambda a, b: a < b,  # type: ignore[operator]
    "<=": lambda a, b: a <= b,  # type: ignore[operator]
    ">": lambda a, b: a > b,  # type: ignore[operator]
    ">=": lambda a, b: a >= b,  # type: ignore[operator]
}

# ISO-8601 text that Python's datetime.fromisoformat reads field by field as this does;
# other text either fails in Python too (an error) or needs Python to tell (unknown).
_ISO = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    "(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,6})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?$"
)
# The shapes of that text with digits as 9, "T" as a space, "," as "." and "+" as "-":
# checking them with translate() is cheaper than a regular expression in PostgreSQL.
_ISO_SHAPES = ("9999-99-99",) + tuple(
    time + zone
    for time in ["9999-99-99 99:99", "9999-99-99 99:99:99"] + ["9999-99-99 99:99:99." + "9" * k for k in range(1, 7)]
    for zone in ("", "Z", "-99:99")
)
_NOT_A_DATE = "'-infinity'::timestamptz"  # fromisoformat raises
_MAYBE_A_DATE = "'infinity'::timestamptz"  # only Python can tell


def _iso_moment(text: str) -> str:
    """SQL timestamptz of ISO text, -infinity where Python raises, infinity where unsure.

    Valid text in the common forms is cast (naive text is UTC, as the service fixes now's
    zone to UTC); anything else is classified: definitely not a date for Python (an
    error), or a form only Python can tell (unknown).
    """
    s = text

    def field(start: int, length: int) -> str:
        return f"substr({s}, {start}, {length})::int"

    def when(guard: str, condition: str) -> str:
        return f"(CASE WHEN {guard} THEN {condition} ELSE FALSE END)"

    shapes = ", ".join(f"'{shape}'" for shape in _ISO_SHAPES)
    day = field(9, 2)
    last_day = f"extract(day FROM make_date({field(1, 4)}, {field(6, 2)}, 1) + interval '1 month - 1 day')::int"
    has_time = f"length({s}) > 10"
    has_seconds = f"(length({s}) > 18 AND substr({s}, 17, 1) = ':')"
    has_offset = f"(length({s}) > 16 AND substr({s}, length({s}) - 5, 1) IN ('+', '-'))"
    castable = (
        f"(CASE WHEN translate({s}, '0123456789T,+', '9999999999 .-') NOT IN ({shapes}) THEN FALSE"
        f" WHEN left({s}, 4) IN ('0000', '0001', '9999') THEN FALSE"
        f" WHEN {field(6, 2)} NOT BETWEEN 1 AND 12 OR {day} = 0 THEN FALSE"
        f" WHEN {day} > 28 AND {day} > {last_day} THEN FALSE"
        f" WHEN {when(has_time, f'{field(12, 2)} > 23 OR {field(15, 2)} > 59')} THEN FALSE"
        f" WHEN {when(has_seconds, f'{field(18, 2)} > 59')} THEN FALSE"
        f" WHEN {when(has_offset, f'substr({s}, length({s}) - 4, 2)::int > 15 OR right({s}, 2)::int > 59')}"
        f" THEN FALSE ELSE TRUE END)"
    )
    cast = (
        f"(CASE WHEN length({s}) = 10 THEN {s} || ' 00:00+00:00'"
        f" WHEN right({s}, 1) = 'Z' OR {has_offset} THEN replace({s}, ',', '.')"
        f" ELSE replace({s}, ',', '.') || '+00:00' END)::timestamptz"
    )
    return (
        f"(CASE WHEN {castable} THEN {cast}"
        f" WHEN NOT ({s} ~ '{_ISO}') THEN (CASE WHEN ({s}) = '' OR ({s}) ~ '^[!-/:-~]'"
        f" THEN {_NOT_A_DATE} ELSE {_MAYBE_A_DATE} END)"
        f" WHEN {field(1, 4)} = 0 THEN {_NOT_A_DATE}"
        f" WHEN {field(1, 4)} IN (1, 9999) THEN {_MAYBE_A_DATE}"
        f" WHEN {field(6, 2)} NOT BETWEEN 1 AND 12 THEN {_NOT_A_DATE}"
        f" WHEN {day} NOT BETWEEN 1 AND {last_day} THEN {_NOT_A_DATE}"
        f" WHEN {when(has_time, f'{field(12, 2)} > 23 OR {field(15, 2)} > 59')} THEN {_NOT_A_DATE}"
        f" WHEN {when(has_seconds, f'{field(18, 2)} > 59')} THEN {_NOT_A_DATE}"
        f" ELSE {_MAYBE_A_DATE} END)"  # an offset Python reads and PostgreSQL does not (16:00 to 23:59, :60)
    )


def _ascii(text: str) -> str:
    return f"(octet_length({text}) = char_length({text}))"


# --- the translator ---------------------------------------------------------------------------


@dataclass
class Translator:
    now: dt.datetime
    profile: ProfileSource
    prefix: str = ""
    params: dict[str, object] = field(default_factory=dict)
    joins: list[str] = field(default_factory=list)
    _aliases: int = 0
    _now_sql: str = ""

    # -- plumbing --

    def param(self, value: object, cast: str) -> str:
        name = f"{self.prefix}p{len(self.params)}"
        self.params[name] = value
        return f"%({name})s::{cast}"

    def alias(self) -> str:
        self._aliases += 1
        return f"{self.prefix}x{self._aliases}"

    def lateral(self, expr: str) -> str:
        """Compute `expr` once per row (it must only read the row itself)."""
        name = f"{self.prefix}l{len(self.joins)}"
        self.joins.append(f"CROSS JOIN LATERAL (SELECT {expr} AS v OFFSET 0) AS {name}")
        return f"{name}.v"

    def now_sql(self) -> str:
        if not self._now_sql:
            self._now_sql = self.param(self.now, "timestamptz")
        return self._now_sql

    def const(self, value: object) -> Val:
        """A value known when translating."""
        if value is None:
            return Val((Alt(NULL, const=None),))
        if isinstance(value, bool):
            return Val((Alt(BOOL, None, "TRUE" if value else "FALSE", value),))
        if isinstance(value, int):
            try:
                digits = str(value)
            except ValueError:  # more digits than Python will print
                raise NotTranslatable("an integer too long for SQL") from None
            return Val((Alt(INT, None, self.param(digits, "numeric"), value),))
        if isinstance(value, float):
            if math.isnan(value):
                raise NotTranslatable("NaN")
            text = repr(value) if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
            return Val((Alt(FLOAT, None, self.param(text, "float8"), value),))
        if isinstance(value, str):
            if "\x00" in value:
                raise NotTranslatable("text with a NUL character")
            return Val((Alt(STR, None, self.param(value, "text"), value),))
        if isinstance(value, list):
            return Val((Alt(LIST, None, self.param(_json(value), "jsonb"), value),))
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                raise NotTranslatable("a naive datetime")
            return Val((Alt(TS, None, self.param(value.isoformat(), "timestamptz"), value),))
        if isinstance(value, dt.date):
            return Val((Alt(DATE, None, self.param(value.isoformat(), "date"), value),))
        raise NotTranslatable(f"a {type(value).__name__} value")

    def jsonb(self, expr: str, text: str | None = None) -> Val:
        """A JSON value read from the row: one alternative per JSON type. `text` is the same
        value read as text where that is cheaper (`parent ->> key` for `parent -> key`)."""
        t = f"COALESCE(jsonb_typeof({expr}), 'null')"
        is_float = f"(strpos(({expr})::text, '.') > 0)"
        in_range = f"(({expr})::numeric = 0 OR abs(({expr})::numeric) BETWEEN 1e-307 AND 1e308)"
        number_in_range = f"(CASE WHEN {t} = 'number' THEN {in_range} ELSE FALSE END)"

        def alt(cat: str, label: str, value: str = "", sub: str | None = None, full: str | None = None) -> Alt:
            cond = f"{t} = '{label}'" if sub is None else f"({t} = '{label}' AND {full or sub})"
            return Alt(cat, cond, value, switch=t, label=label, sub=sub)

        return Val(
            (
                alt(NULL, "null"),
                alt(BOOL, "boolean", f"({expr})::boolean"),
                alt(INT, "number", f"({expr})::numeric", f"NOT {is_float}"),
                alt(FLOAT, "number", f"({expr})::numeric::float8", f"({is_float} AND {in_range})",
                    f"{is_float} AND {number_in_range}"),
                alt(UNK, "number", "", f"({is_float} AND NOT {in_range})", f"{is_float} AND NOT {number_in_range}"),
                alt(STR, "string", text or f"(({expr}) #>> '{{}}')"),
                alt(LIST, "array", expr),
                alt(DICT, "object", expr),
            ),
            json=expr,
        )

    def step(self, val: Val, key: str | int) -> Val:
        """`value.key` / `value[n]`: only objects and lists are indexed, anything else is null."""
        if isinstance(key, str) and "\x00" in key:
            raise NotTranslatable("a key with a NUL character")
        index = self.param(key, "text") if isinstance(key, str) else self.param(key, "int")
        if val.json is not None:
            if isinstance(key, int):  # PostgreSQL reads a JSON scalar as a one-item array
                array = f"jsonb_typeof({val.json}) = 'array'"
                return self.jsonb(
                    f"(CASE WHEN {array} THEN ({val.json}) -> {index} END)",
                    f"(CASE WHEN {array} THEN ({val.json}) ->> {index} END)",
                )
            return self.jsonb(f"(({val.json}) -> {index})", f"(({val.json}) ->> {index})")
        containers = [a for a in val.alts if a.cat in (LIST, DICT)]
        if not containers:
            return self.const(None)
        if any(a.cat in (ERR, UNK) for a in val.alts):
            raise NotTranslatable("a path into a value that may fail")
        if isinstance(key, int):
            containers = [a for a in containers if a.cat == LIST]
        branches = " ".join(f"WHEN {a.cond or 'TRUE'} THEN ({a.expr}) -> {index}" for a in containers)
        return self.jsonb(f"(CASE {branches} END)")

    # -- a necessary condition, for indexes --

    def prefilter(self, node: Node) -> str | None:
        """A condition every row the rule selects meets: `trait == 'text'` and
        `trait in ['text', ...]` become JSON containment, combined through and/or."""
        if isinstance(node, BoolOp):
            parts = [self.prefilter(value) for value in node.values]
            if node.op == "and":
                return _and(*(p for p in parts if p is not None))
            return None if any(p is None for p in parts) else _or(*parts)  # type: ignore[arg-type]
        if not isinstance(node, Compare) or len(node.ops) != 1:
            return None
        (op,), (left, right) = node.ops, node.operands
        texts: list[str] = []
        path = None
        if op == "==":
            for side, other in ((left, right), (right, left)):
                if isinstance(other, Const) and isinstance(other.value, str):
                    path, texts = side, [other.value]
                    break
        elif op == "in" and _const_list(right):
            values = [item.value for item in right.items]  # type: ignore[union-attr]
            if values and all(isinstance(v, str) for v in values):
                path, texts = left, values  # type: ignore[assignment]
        keys = self._trait_keys(path)
        if keys is None or not texts or any("\x00" in t for t in texts):
            return None
        documents = []
        for text in texts:
            document: object = text
            for key in reversed(keys):
                document = {key: document}
            documents.append(f"{self.profile.traits()} @> {self.param(json.dumps(document), 'jsonb')}")
        return _or(*documents)

    def _trait_keys(self, node: Node | None) -> list[str] | None:
        """The keys of `profile.a.b` when it reads the stored traits only."""
        if not isinstance(node, Path) or node.root != "profile" or not node.keys:
            return None
        keys = list(node.keys)
        if keys[0] in self.profile.keys or not all(isinstance(k, str) and "\x00" not in k for k in keys):
            return None
        return keys  # type: ignore[return-value]

    # -- boolean context --

    def state(self, node: Node) -> State:
        """The set of outcomes of `node` used as a condition (its truthiness)."""
        if _foldable(node):
            ok, value = self.fold(node)
            return (T if value else F) if ok else E
        if isinstance(node, BoolOp):
            combine = s_and if node.op == "and" else s_or
            result = self.state(node.values[0])
            for value in node.values[1:]:
                if isinstance(result, int) and not result & (T if node.op == "and" else F):
                    break  # Python never evaluates the rest
                result = combine(result, self.state(value))
            return result
        if isinstance(node, Unary) and node.op == "not":
            return s_not(self.state(node.operand))
        if isinstance(node, Compare):
            return self.compare(node)
        if isinstance(node, Call) and node.name in _PREDICATES:
            return self.predicate(node)
        return self.truth(self.value(node))

    def truth(self, val: Val) -> State:
        branches: list[tuple[Alt, State]] = []
        for a in val.alts:
            if a.const is not _NO:
                s: State = T if a.const else F
            elif a.cat == NULL:
                s = F
            elif a.cat == BOOL:
                s = bool_state(a.expr)
            elif a.cat in (INT, FLOAT):
                s = bool_state(f"{a.expr} <> 0")
            elif a.cat == STR:
                s = bool_state(f"char_length({a.expr}) > 0")
            elif a.cat == LIST:
                s = bool_state(f"jsonb_array_length({a.expr}) > 0")
            elif a.cat == DICT:
                s = bool_state(f"{a.expr} <> '{{}}'::jsonb")
            elif a.cat == ERR:
                s = E
            elif a.cat == UNK:
                s = ANY
            else:  # datetimes, dates, the profile
                s = T
            branches.append((a, s))
        return case(branches)

    def state_value(self, s: State) -> Val:
        """A condition used as a value (a boolean, or its error)."""
        if isinstance(s, int):
            if s in (F, T):
                return self.const(s == T)
            return Val((Alt(ERR if s == E else UNK),))
        return Val(
            (
                Alt(BOOL, f"({s}) IN (1, 2)", f"(({s}) = 2)"),
                Alt(ERR, f"({s}) = 4"),
                Alt(UNK, f"({s}) NOT IN (1, 2, 4)"),
            )
        )

    # -- constants --

    def fold(self, node: Node) -> tuple[bool, object]:
        """Evaluate a part that reads no data with the Python compiler itself."""
        function = _load(node, fast=False, text="<constant>")[1]["_rule"]
        ctx = RuleContext(now=self.now)
        try:
            return True, function(ctx.event, ctx.profile, ctx.context, ctx.journey, ctx)
        except Exception:  # noqa: BLE001 - a constant error is the outcome E
            return False, None

    # -- value context --

    def value(self, node: Node) -> Val:
        if _foldable(node):
            ok, value = self.fold(node)
            return self.const(value) if ok else Val((Alt(ERR),))
        if isinstance(node, Path):
            return self.path(node)
        if isinstance(node, Unary):
            if node.op == "not":
                return self.state_value(s_not(self.state(node.operand)))
            return self.negate(self.value(node.operand))
        if isinstance(node, BinOp):
            return self.binop(node)
        if isinstance(node, Compare):
            return self.state_value(self.compare(node))
        if isinstance(node, Call):
            if node.name in _PREDICATES:
                return self.state_value(self.predicate(node))
            return self.call(node)
        raise NotTranslatable(f"{type(node).__name__} used as a value")

    def path(self, node: Path) -> Val:
        if node.root != "profile":
            raise NotTranslatable(f"{node.root}.* is only known while a journey runs")
        if not node.keys:
            return Val((Alt(PROFILE, None, self.profile.traits()),))
        first, *rest = node.keys
        val = self.const(None) if isinstance(first, int) else self.profile.attribute(first, self)
        for key in rest:
            val = self.step(val, key)
        return val

    # -- comparisons --

    def compare(self, node: Compare) -> State:
        """A chain `a < b <= c` is `a < b and b <= c`, each operand evaluated once (codegen.compare)."""
        operands, ops = node.operands, node.ops
        last = len(operands) - 1
        for i, op in enumerate(ops):  # a pair that can never hold makes the whole chain false
            left, right = operands[i], operands[i + 1]
            if op in _SQL_OP and op != "==" and (_is_null(left) or _is_null(right)):
                return F
            if op == "in" and (_is_null(right) or (_is_null(left) and not _const_list(right))):
                return F
        vals: dict[int, Val] = {}

        def val(i: int) -> Val:
            if i not in vals:
                vals[i] = self.value(operands[i])
            return vals[i]

        result: State = T
        for i, op in enumerate(ops):
            left, right = operands[i], operands[i + 1]
            if op in ("==", "!="):
                s = self.pair(val(i), val(i + 1), order="both", null=F, cmp=self.eq)
                if op == "!=":
                    s = s_not(s)
            elif op in _SQL_OP:
                s = self.pair(
                    val(i), val(i + 1), order="LR", null=F, cmp=lambda a, b, op=op: self.order(op, a, b)
                )
            else:
                negate = op == "not in"
                if _is_null(right):
                    s = T  # `x not in null`
                elif _const_list(right):
                    s = self.member_const(val(i), [item.value for item in right.items])  # type: ignore[union-attr]
                    if negate:
                        s = s_not(s)
                elif _is_null(left):
                    s = T  # `null not in x`
                elif isinstance(right, ListExpr):  # `x in [profile.a, 'b']`: equal to one of the items
                    list_first = negate and i + 1 != last
                    s = self.member_items(val(i), [self.value(item) for item in right.items], negate, list_first)
                elif not negate:
                    s = self.pair(val(i), val(i + 1), order="LR", null=F, cmp=self.contains_in)
                else:
                    shared = i + 1 != last and not isinstance(right, Const)
                    s = self.pair(
                        val(i), val(i + 1), order="RL" if shared else "LR", null=T,
                        cmp=lambda a, b: s_not(self.contains_in(a, b)),
                    )
            result = s_and(result, s)
        return result

    def pair(self, left: Val, right: Val, *, order: str, null: State, cmp: Callable[[Alt, Alt], State]) -> State:
        """The outcome of `left <op> right` over every pair of alternatives.

        order "both": both sides are evaluated (an error on either side raises);
        "LR"/"RL": that side first, and a null there decides (`null`) without the other.
        """
        def compared(a: Alt, b: Alt) -> State:
            """cmp, except that a number we cannot read exactly meets something that is not a number."""
            if a.cat == UNK or b.cat == UNK:
                known = b if a.cat == UNK else a
                unread = a if a.cat == UNK else b
                if unread.label != "number" or known.cat in NUMBERS or known.cat in (UNK, ERR, PROFILE):
                    return ANY
                stand_in = Alt(FLOAT, unread.cond, "", switch=unread.switch, label=unread.label, sub=unread.sub)
                return cmp(stand_in, b) if a.cat == UNK else cmp(a, stand_in)
            return cmp(a, b)

        if order == "both":

            def inner(a: Alt) -> State:
                branches: list[tuple[Alt, State]] = []
                for b in right.alts:
                    if a.cat == ERR or b.cat == ERR:
                        s: State = E
                    else:
                        s = compared(a, b)
                    branches.append((b, s))
                return case(branches)

            return case([(a, inner(a)) for a in left.alts])
        first, second = (left, right) if order == "LR" else (right, left)

        def decided(a: Alt) -> State | None:
            if a.cat == ERR:
                return E
            if a.cat == UNK and a.label != "number":
                return ANY
            if a.cat == NULL:
                return null
            return None

        def outer(a: Alt) -> State:
            early = decided(a)
            if early is not None:
                return early
            branches: list[tuple[Alt, State]] = []
            for b in second.alts:
                s = decided(b)
                if s is None:
                    s = compared(a, b) if order == "LR" else compared(b, a)
                branches.append((b, s))
            return case(branches)

        return case([(a, outer(a)) for a in first.alts])

    def eq(self, a: Alt, b: Alt) -> State:
        """Python's `a == b` for two present alternatives (never raises)."""
        if a.const is not _NO and b.const is not _NO:
            return T if a.const == b.const else F
        if a.cat == NULL or b.cat == NULL:
            return T if a.cat == b.cat else F
        if a.cat in NUMBERS and b.cat in NUMBERS:
            return self.numbers("==", a, b)
        if PROFILE in (a.cat, b.cat):
            if DICT in (a.cat, b.cat) or a.cat == b.cat:
                raise NotTranslatable("comparing the whole profile")
            return F
        if a.cat != b.cat:
            return F
        if a.cat == STR:
            return bool_state(f"{_c(a.expr)} = {_c(b.expr)}")
        if a.cat in (LIST, DICT):
            exact = any(
                x.const is not _NO and all(i is None or isinstance(i, str) for i in x.const)  # type: ignore[attr-defined]
                for x in (a, b)
            )
            if exact:  # jsonb equality is Python's when one side holds only text and nulls
                return bool_state(f"{a.expr} = {b.expr}")
            # Equal JSON is equal in Python; unequal JSON may still be ([1] == [true]).
            return f"(CASE WHEN {a.expr} = {b.expr} THEN 2 ELSE 3 END)"
        return bool_state(f"{a.expr} = {b.expr}")  # datetimes, dates

    def order(self, op: str, a: Alt, b: Alt) -> State:
        """Python's `a < b` (etc.) for two present alternatives."""
        if a.const is not _NO and b.const is not _NO:
            try:
                return T if _PY_OP[op](a.const, b.const) else F
            except TypeError:
                return E
        if a.cat in NUMBERS and b.cat in NUMBERS:
            return self.numbers(op, a, b)
        if a.cat == b.cat == STR:
            return bool_state(f"{_c(a.expr)} {op} {_c(b.expr)}")
        if a.cat == b.cat and a.cat in (TS, DATE):
            return bool_state(f"{a.expr} {op} {b.expr}")
        if a.cat == b.cat == LIST:
            return ANY  # element by element, and the elements may not compare
        return E

    def numbers(self, op: str, a: Alt, b: Alt) -> State:
        """Numbers compare by value, exactly as Python does (booleans are 0 and 1)."""
        (ka, ea, ca), (kb, eb, cb) = _number(a), _number(b)
        sql_op = _SQL_OP[op]
        if ca is not _NO and cb is not _NO:
            return T if _PY_OP[op](ca, cb) else F
        if ka == kb:  # numeric against numeric, or float8 against float8
            return bool_state(f"{ea} {sql_op} {eb}")
        if ka == "float":  # make it `integer op float`
            (ea, ca), (eb, cb), op = (eb, cb), (ea, ca), _mirror(op)
            sql_op = _SQL_OP[op]
        if cb is not _NO:  # against a constant float: compare with its exact decimal value
            if math.isinf(cb):  # type: ignore[arg-type]
                return T if _PY_OP[op](0, cb) else F
            return bool_state(f"{ea} {sql_op} {self.param(str(Decimal(cb)), 'numeric')}")  # type: ignore[arg-type]
        if ca is not _NO:  # a constant integer against a float
            try:
                near = float(ca)  # type: ignore[arg-type]
            except OverflowError:
                raise NotTranslatable("an integer beyond the float range") from None
            if near == ca:
                return bool_state(f"{self.param(repr(near), 'float8')} {sql_op} {eb}")
            low, high = (near, math.nextafter(near, math.inf)) if near < ca else (math.nextafter(near, -math.inf), near)  # type: ignore[operator]
            if op == "==":
                return F
            if op in ("<", "<="):  # ca < f  <=>  f >= high
                return bool_state(f"{eb} >= {self.param(repr(high), 'float8')}")
            return bool_state(f"{eb} <= {self.param(repr(low), 'float8')}")
        exact = bool_state(f"({ea})::float8 {sql_op} {eb}")
        return f"(CASE WHEN abs({ea}) <= {EXACT_INT} THEN {exact} ELSE 3 END)"

    def contains_in(self, needle: Alt, hay: Alt) -> State:
        """Python's `needle in hay` for two present alternatives."""
        if needle.const is not _NO and hay.const is not _NO:
            try:
                return T if needle.const in hay.const else F  # type: ignore[operator]
            except TypeError:
                return E
        if hay.cat == STR:
            if needle.cat != STR:
                return E  # 'in <string>' requires string as left operand
            return bool_state(f"strpos({_c(hay.expr)}, {_c(needle.expr)}) > 0")
        if hay.cat == LIST:
            return self.list_member(needle, hay.expr)
        if hay.cat in (DICT, PROFILE):
            if needle.cat in (LIST, DICT, PROFILE):
                return E  # unhashable
            if needle.cat != STR:
                return F  # JSON keys are text
            return self.has_key(hay, needle.expr)
        return E  # not iterable

    def has_key(self, hay: Alt, key: str) -> str:
        found = f"({hay.expr} ? ({key}))"
        if hay.cat == PROFILE:
            names = self.param(sorted(self.profile.keys), "text[]")
            found = f"({_c(key)} = ANY({names}) OR {found})"
        return bool_state(found)

    def list_member(self, needle: Alt, array: str) -> State:
        """Python's `needle in a_json_list`: equal to one of its items."""
        if needle.cat == STR:  # @> finds text among the top-level items only, as wanted
            return bool_state(f"({array}) @> jsonb_build_array({needle.expr})")
        if needle.cat in (TS, DATE):
            return F
        if needle.cat == PROFILE:
            raise NotTranslatable("the whole profile in a list")
        x = self.alias()
        item = self.jsonb(f"{x}.v")
        s = self.pair(item, Val((Alt(needle.cat, None, needle.expr, needle.const),)), order="both", null=F, cmp=self.eq)
        return (
            f"(SELECT CASE WHEN bool_or({x}s.s = 2) THEN 2 WHEN bool_or(({x}s.s & 2) <> 0) THEN 3 ELSE 1 END"
            f" FROM (SELECT {s} AS s FROM jsonb_array_elements({array}) AS {x}(v)) AS {x}s)"
        )

    def member_const(self, val: Val, items: list[object]) -> State:
        """`x in [literals]`: a set lookup in Python (a list or object cannot be looked up)."""
        strings = [i for i in items if isinstance(i, str)]
        numbers = [i for i in items if isinstance(i, (bool, int, float))]
        branches: list[tuple[Alt, State]] = []
        for a in val.alts:
            if a.cat == ERR:
                s: State = E
            elif a.cat == UNK:
                s = ANY if a.label != "number" or numbers else F
            elif a.const is not _NO:
                try:
                    s = T if a.const in frozenset(items) else F
                except TypeError:
                    s = E
            elif a.cat == NULL:
                s = T if None in items else F
            elif a.cat in (LIST, DICT, PROFILE):
                s = E  # unhashable
            elif a.cat == STR:
                s = bool_state(f"{_c(a.expr)} = ANY({self.param(strings, 'text[]')})") if strings else F
            elif a.cat in NUMBERS:
                s = self._member_numbers(a, numbers)
            else:
                s = F
            branches.append((a, s))
        return case(branches)

    def member_items(self, needle: Val, items: list[Val], negate: bool, list_first: bool) -> State:
        """`x in [a, b]` with computed items: x first (a null x decides), then every item is
        evaluated (an error raises), then x is compared with each (never raises).
        `not in` with the list shared by the next comparison evaluates the list first."""
        built: State = T  # every item evaluated without an error
        for item in items:
            built = s_and(built, case([(a, E if a.cat == ERR else ANY if a.cat == UNK else T) for a in item.alts]))
        null = T if negate else F

        def against(a: Alt) -> State:
            if a.cat == ERR:
                return E
            if a.cat == NULL:
                return null
            found: State = F
            for item in items:
                present = Val(tuple(b for b in item.alts if b.cat not in (ERR, UNK))) if item.alts else item
                if present.alts:
                    found = s_or(found, self.pair(Val((a,)), present, order="both", null=F, cmp=self.eq))
            return s_not(found) if negate else found

        if list_first:
            return s_and(built, case([(a, against(a)) for a in needle.alts]))
        return case([(a, E if a.cat == ERR else null if a.cat == NULL else s_and(built, against(a))) for a in needle.alts])

    def _member_numbers(self, a: Alt, numbers: list[bool | int | float]) -> State:
        kind, expr, _ = _number(a)
        if kind == "int":  # equal to an integer, or to a float with that exact value
            exact = sorted({int(n) for n in numbers if not isinstance(n, float) or (math.isfinite(n) and n.is_integer())})
            if not exact:
                return F
            return bool_state(f"{expr} = ANY({self.param([str(n) for n in exact], 'numeric[]')})")
        floats: set[float] = set()
        for n in numbers:
            if isinstance(n, float):
                floats.add(n)
            else:
                with contextlib.suppress(OverflowError):
                    if float(n) == n:
                        floats.add(float(n))
        if not floats:
            return F
        texts = [repr(n) if math.isfinite(n) else ("Infinity" if n > 0 else "-Infinity") for n in sorted(floats)]
        return bool_state(f"{expr} = ANY({self.param(texts, 'float8[]')})")

    # -- predicates (functions returning a boolean) --

    def predicate(self, node: Call) -> State:
        name = node.name
        if name == "exists":
            arg = node.args[0]
            val = self.value(arg)
            return case([(a, E if a.cat == ERR else ANY if a.cat == UNK else F if a.cat == NULL else T) for a in val.alts])
        hay, needle = (self.value(arg) for arg in node.args)
        if name == "contains":
            return self.pair(hay, needle, order="both", null=F, cmp=self._contains)
        return self.pair(hay, needle, order="both", null=F, cmp=lambda a, b: self._affix(name, a, b))

    def _contains(self, hay: Alt, needle: Alt) -> State:
        """functions.f_contains: null haystack is false; a dict with an unhashable needle too."""
        if hay.cat == NULL:
            return F
        if hay.const is not _NO and needle.const is not _NO:
            try:
                return T if needle.const in hay.const else F  # type: ignore[operator]
            except TypeError:
                return E if not isinstance(hay.const, list) else F
        if hay.cat == STR:
            if needle.cat == NULL:
                return F
            if needle.cat != STR:
                return E
            return bool_state(f"strpos({_c(hay.expr)}, {_c(needle.expr)}) > 0")
        if hay.cat == LIST:
            if needle.cat == NULL:
                return bool_state(f"({hay.expr}) @> '[null]'::jsonb")
            return self.list_member(needle, hay.expr)
        if hay.cat in (DICT, PROFILE):
            return self.has_key(hay, needle.expr) if needle.cat == STR else F
        return E

    def _affix(self, name: str, value: Alt, fix: Alt) -> State:
        """starts_with / ends_with: false with a null side, text only."""
        if value.cat == NULL or fix.cat == NULL:
            return F
        if value.cat != STR or fix.cat != STR:
            return E
        end = "left" if name == "starts_with" else "right"
        return bool_state(f"{end}({value.expr}, char_length({fix.expr})) = {fix.expr}")

    # -- values from operators and functions --

    def map(self, val: Val, fn: Callable[[Alt], list[Alt]]) -> Val:
        """Apply fn to each present alternative; errors and unknowns pass through."""
        out: list[Alt] = []
        for a in val.alts:
            if a.cat in (ERR, UNK):
                out.append(a)
                continue
            for b in fn(a):
                cond = a.cond if b.cond is None else _guard(a.cond, b.cond)
                out.append(Alt(b.cat, cond, b.expr, b.const))
        return Val(tuple(out))

    def negate(self, val: Val) -> Val:
        def neg(a: Alt) -> list[Alt]:
            if a.cat == NULL:
                return [Alt(NULL)]
            if a.cat == BOOL:
                return [Alt(INT, None, f"(-(({a.expr})::int))::numeric")]
            if a.cat in (INT, FLOAT):
                return [Alt(a.cat, None, f"(-({a.expr}))")]
            return [Alt(ERR)]

        return self.map(val, neg)

    def binop(self, node: BinOp) -> Val:
        if node.op == "%":
            raise NotTranslatable("% (Python's remainder differs from SQL's)")
        if node.op in ("+", "-", "/") and (_is_null(node.left) or _is_null(node.right)):
            return self.const(None)
        left, right = self.value(node.left), self.value(node.right)
        both = node.op == "*"  # `*` evaluates both sides first; the others stop at a null left
        out: list[Alt] = []
        for a in left.alts:
            if a.cat in (ERR, UNK) or (a.cat == NULL and not both):
                out.append(a)
                continue
            for b in right.alts:
                cond = _and(a.cond, b.cond)
                if b.cat == ERR or a.cat == ERR:
                    results = [Alt(ERR)]
                elif a.cat == UNK or b.cat == UNK:
                    results = [Alt(UNK)]
                elif a.cat == NULL or b.cat == NULL:
                    results = [Alt(NULL)]
                else:
                    results = self.arith(node.op, a, b)
                for r in results:
                    out.append(Alt(r.cat, cond if r.cond is None else _guard(cond, r.cond), r.expr))
        return Val(tuple(out))

    def arith(self, op: str, a: Alt, b: Alt) -> list[Alt]:
        """`a op b` for two present alternatives: one result, or results split by conditions."""
        if a.cat in NUMBERS and b.cat in NUMBERS:
            (ka, ea, _), (kb, eb, _) = _number(a), _number(b)
            if op in ("+", "-", "*") and ka == kb == "int":
                return [Alt(INT, None, f"({ea} {op} {eb})")]
            # Python converts integers to float (exact up to 2**53); float8 arithmetic is
            # IEEE like Python's, but PostgreSQL raises on overflow/underflow: stay well
            # inside the range, and leave the rest to Python.
            fa = ea if ka == "float" else f"({ea})::float8"
            fb = eb if kb == "float" else f"({eb})::float8"
            exact = _and(*(f"abs({e}) <= {EXACT_INT}" for k, e in ((ka, ea), (kb, eb)) if k == "int"))
            small = _and(*(f"({x} = 0 OR abs({x}) BETWEEN 1e-150 AND 1e150)" for x in (fa, fb)))
            safe = _guard(exact, small or "TRUE")
            if op != "/":
                result = Alt(FLOAT, None, f"({fa} {op} {fb})")
                return [Alt(FLOAT, safe, result.expr), Alt(UNK, _not(safe))]
            zero = f"(({eb}) = 0)"
            fine = _and(_not(zero), safe)
            return [Alt(ERR, zero), Alt(FLOAT, fine, f"({fa} / {fb})"), Alt(UNK, _and(_not(zero), _not(safe)))]
        if op == "+" and a.cat == b.cat and a.cat in (STR, LIST):
            return [Alt(a.cat, None, f"({a.expr} || {b.expr})")]
        if op == "-" and a.cat == b.cat and a.cat in (TS, DATE):
            raise NotTranslatable("date differences (timedelta)")
        return [Alt(ERR)]

    def call(self, node: Call) -> Val:
        name = node.name
        if name not in _VALUE_FUNCTIONS:
            raise NotTranslatable(f"{name}() has no exact SQL equivalent")
        if name == "coalesce":
            return self.coalesce([self.value(arg) for arg in node.args])
        (arg,) = (self.value(a) for a in node.args)
        if name in ("lower", "upper"):

            def case_fold(a: Alt) -> list[Alt]:
                if a.cat == NULL:
                    return [Alt(NULL)]
                if a.cat != STR:
                    return [Alt(ERR)]
                # Python and SQL agree on ASCII; other text goes to Python ('ß'.upper() == 'SS').
                return [Alt(STR, _ascii(a.expr), f'{name}({_c(a.expr)})'), Alt(UNK, _not(_ascii(a.expr)))]

            return self.map(arg, case_fold)
        if name == "len":

            def length(a: Alt) -> list[Alt]:
                if a.cat == NULL:
                    return [Alt(NULL)]
                if a.cat == STR:
                    return [Alt(INT, None, f"char_length({a.expr})::numeric")]
                if a.cat == LIST:
                    return [Alt(INT, None, f"jsonb_array_length({a.expr})::numeric")]
                if a.cat == DICT:
                    return [Alt(INT, None, f"(SELECT count(*) FROM jsonb_object_keys({a.expr}))::numeric")]
                if a.cat == PROFILE:
                    raise NotTranslatable("len(profile)")
                return [Alt(ERR)]

            return self.map(arg, length)
        if name == "abs":

            def absolute(a: Alt) -> list[Alt]:
                if a.cat == NULL:
                    return [Alt(NULL)]
                if a.cat == BOOL:
                    return [Alt(INT, None, f"abs(({a.expr})::int)::numeric")]
                if a.cat in (INT, FLOAT):
                    return [Alt(a.cat, None, f"abs({a.expr})")]
                return [Alt(ERR)]

            return self.map(arg, absolute)
        if name in ("int", "float"):
            return self.map(arg, lambda a: _to_number(name, a))
        if name == "date" and all(a.cat in (DATE, NULL, ERR, UNK) for a in arg.alts):
            return arg
        moment = self.moment(arg)
        if name in ("days_since", "hours_since", "days_until"):
            now = self.now_sql()
            unit = "3600.0" if name == "hours_since" else "86400.0"

            def elapsed(a: Alt) -> list[Alt]:
                if a.cat == NULL:
                    return [Alt(NULL)]
                since, until = (a.expr, now) if name != "days_until" else (now, a.expr)
                seconds = f"(extract(epoch FROM {until}) - extract(epoch FROM {since}))"
                return [Alt(FLOAT, None, f"({seconds}::float8 / {unit}::float8)")]

            return self.map(moment, elapsed)
        if name == "date":
            return self.map(
                moment,
                lambda a: [Alt(NULL)] if a.cat == NULL else [Alt(DATE, None, f"(({a.expr}) AT TIME ZONE 'UTC')::date")],
            )
        return moment  # datetime()

    def moment(self, val: Val) -> Val:
        """functions._to_datetime: a datetime, a date, or ISO-8601 text (naive means UTC)."""

        def to_moment(a: Alt) -> list[Alt]:
            if a.cat == NULL:
                return [Alt(NULL)]
            if a.cat == TS:
                return [Alt(TS, None, a.expr, a.const)]
            if a.cat == DATE:
                return [Alt(TS, None, f"(({a.expr})::timestamp AT TIME ZONE 'UTC')")]
            if a.cat != STR:
                return [Alt(ERR)]
            # Read the text once, then parse it once (a parse reading the row's JSON
            # again for each of its ~20 uses cost ~5x as much).
            text = a.expr if a.const is not _NO else self.lateral(a.expr)
            parsed = self.lateral(_iso_moment(text))
            return [
                Alt(TS, f"({parsed} > {_NOT_A_DATE} AND {parsed} < {_MAYBE_A_DATE})", parsed),
                Alt(ERR, f"({parsed} = {_NOT_A_DATE})"),
                Alt(UNK, f"({parsed} = {_MAYBE_A_DATE})"),
            ]

        return self.map(val, to_moment)

    def coalesce(self, vals: list[Val]) -> Val:
        """The first present argument; every argument is evaluated first (errors raise)."""
        errs = [a.cond for v in vals for a in v.alts if a.cat == ERR]
        unks = [a.cond for v in vals for a in v.alts if a.cat == UNK]
        failed = _or(*errs) if errs else "FALSE"
        unsure = _or(*unks) if unks else "FALSE"
        clean = _and(_not(failed), _not(unsure))
        out: list[Alt] = [Alt(ERR, failed), Alt(UNK, _and(_not(failed), unsure))]
        before_null: str | None = "TRUE"
        for v in vals:
            for a in v.alts:
                if a.cat not in (NULL, ERR, UNK):
                    out.append(Alt(a.cat, _and(clean, before_null, a.cond) or "TRUE", a.expr, a.const))
            nulls = [a.cond for a in v.alts if a.cat == NULL]
            before_null = _and(before_null, _or(*nulls) if nulls else "FALSE")
        out.append(Alt(NULL, _and(clean, before_null) or "TRUE"))
        return Val(tuple(a for a in out if a.cond != "FALSE"))


# --- helpers ------------------------------------------------------------------------------------

_PREDICATES = frozenset({"contains", "starts_with", "ends_with", "exists"})
_VALUE_FUNCTIONS = frozenset(
    {
        "lower", "upper", "len", "abs", "int", "float", "coalesce",
        "days_since", "hours_since", "days_until", "date", "datetime",
    }
)


def _to_number(name: str, a: Alt) -> list[Alt]:
    """functions.f_int / f_float on one alternative. Text goes to Python: its int() and
    float() read forms ("1_000", " 7 ", "٣") that SQL casts do not."""
    if a.cat == NULL:
        return [Alt(NULL)]
    if a.cat == STR:
        return [Alt(UNK)]
    if a.cat not in NUMBERS:
        return [Alt(ERR)]
    kind, expr, _ = _number(a)
    if name == "float":
        if kind == "float":
            return [Alt(FLOAT, None, expr)]
        fits = f"abs({expr}) < 1e308"  # beyond, Python's float() raises OverflowError
        return [Alt(FLOAT, fits, f"({expr})::float8"), Alt(UNK, _not(fits))]
    if kind == "int":
        return [Alt(INT, None, expr)]
    # float8 -> numeric keeps 15 digits: exact for the whole numbers below 1e15.
    fits = f"abs({expr}) < 1e15"
    return [Alt(INT, fits, f"trunc({expr})::numeric"), Alt(UNK, _not(fits))]


def _number(a: Alt) -> tuple[str, str, object]:
    """(kind "int"/"float", SQL numeric or float8, constant value or _NO)."""
    if a.cat == BOOL:
        const = int(a.const) if a.const is not _NO else _NO  # type: ignore[call-overload]
        return "int", f"(({a.expr})::int)::numeric", const
    return ("int" if a.cat == INT else "float"), a.expr, a.const


def _json(value: object) -> str:
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


def _is_null(node: Node) -> bool:
    return isinstance(node, Const) and node.value is None


def _const_list(node: Node) -> bool:
    return isinstance(node, ListExpr) and all(isinstance(item, Const) for item in node.items)


def _foldable(node: Node) -> bool:
    """Reads no data: no path, no event count."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Path) or (isinstance(current, Call) and current.name == "events_in_last"):
            return False
        stack.extend(children(current))
    return True
