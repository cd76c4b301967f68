"""The Translator: a rule's tree -> an outcome state over one row, with its parameters."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field

from ..compiler import RuleContext, _load
from ..nodes import BinOp, BoolOp, Call, Compare, Const, Node, Path, Unary, reads_no_data
from ..parser import parse
from .comparisons import Comparisons, is_literal_list
from .due import due_sql
from .functions import PREDICATES, Functions
from .outcomes import ANY, E, F, State, T, all_of, any_of, bool_state, case, s_and, s_not, s_or
from .values import (
    BOOL,
    DATE,
    DICT,
    ERR,
    FLOAT,
    INT,
    LIST,
    NOT_CONST,
    NULL,
    PROFILE,
    STR,
    TS,
    UNK,
    Alt,
    NotTranslatable,
    ProfileSource,
    Translation,
    Val,
    json_literal,
)

INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1  # the subscripts `jsonb -> int` takes


def translate(
    text: str, *, now: dt.datetime, profile: ProfileSource, prefix: str = "", due: bool = False
) -> Translation:
    """Translate `text` for rows read at `now` (which must be in UTC: naive ISO text in
    the data is read in now's zone, as the Python evaluator does). `prefix` keeps the
    parameter and join names of several translations in one statement apart. `due`: also
    work out when each row's answer may next change with time alone (Translation.due).

    Raises RuleSyntaxError for a broken rule and NotTranslatable for one SQL cannot
    answer exactly.
    """
    if now.tzinfo is None or now.utcoffset() != dt.timedelta(0) or str(now.tzinfo) != "UTC":
        raise NotTranslatable("now must be a UTC datetime")
    tree = parse(text).tree
    tr = Translator(now=now, profile=profile, prefix=prefix)
    state = tr.state(tree)
    prefilter = tr.prefilter(tree) if isinstance(state, str) else None
    moment = due_sql(tr, tree) if due else None
    return Translation(text, state, dict(tr.params), tuple(tr.joins), prefilter, moment)


@dataclass
class Translator(Comparisons, Functions):
    now: dt.datetime
    profile: ProfileSource
    prefix: str = ""
    params: dict[str, object] = field(default_factory=dict)
    joins: list[str] = field(default_factory=list)
    _aliases: int = 0
    _now_sql: str = ""
    # The same value bound once, so the same part of a rule written twice is the same SQL, and
    # the same LATERAL (an event count, a parsed date) is joined once however often it is read.
    _bound: dict[tuple, str] = field(default_factory=dict)
    _laterals: dict[str, str] = field(default_factory=dict)
    _floors: dict[dt.datetime, int] = field(default_factory=dict)  # events_floor, by window start

    def param(self, value: object, cast: str) -> str:
        key = (type(value), tuple(value) if isinstance(value, list) else value, cast)  # lists: of text
        if key not in self._bound:
            name = f"{self.prefix}p{len(self.params)}"
            self.params[name] = value
            self._bound[key] = f"%({name})s::{cast}"
        return self._bound[key]

    def events_floor(self, since: dt.datetime) -> str | None:
        """SQL of the lowest event id an event since then can have (PostgreSQL, when partitions of
        older events can be skipped), else None."""
        from journeys.services.event_storage import events_id_floor

        if since not in self._floors:  # a count read twice, or its first moment too: asked once
            self._floors[since] = events_id_floor(happened_after=since)
        return self.param(self._floors[since], "bigint") if self._floors[since] else None

    def alias(self) -> str:
        self._aliases += 1
        return f"{self.prefix}x{self._aliases}"

    def lateral(self, expr: str) -> str:
        """Compute `expr` once per row (it must only read the row itself, or rows keyed by it)."""
        if expr not in self._laterals:
            name = f"{self.prefix}l{len(self.joins)}"
            self.joins.append(f"CROSS JOIN LATERAL (SELECT {expr} AS v OFFSET 0) AS {name}")
            self._laterals[expr] = f"{name}.v"
        return self._laterals[expr]

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
            text = (
                repr(value) if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
            )
            return Val((Alt(FLOAT, None, self.param(text, "float8"), value),))
        if isinstance(value, str):
            if "\x00" in value:
                raise NotTranslatable("text with a NUL character")
            return Val((Alt(STR, None, self.param(value, "text"), value),))
        if isinstance(value, list):
            return Val((Alt(LIST, None, self.param(json_literal(value), "jsonb"), value),))
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

        def alt(
            cat: str, label: str, value: str = "", sub: str | None = None, full: str | None = None
        ) -> Alt:
            cond = f"{t} = '{label}'" if sub is None else f"({t} = '{label}' AND {full or sub})"
            return Alt(cat, cond, value, switch=t, label=label, sub=sub)

        return Val(
            (
                alt(NULL, "null"),
                alt(BOOL, "boolean", f"({expr})::boolean"),
                alt(INT, "number", f"({expr})::numeric", f"NOT {is_float}"),
                alt(
                    FLOAT,
                    "number",
                    f"({expr})::numeric::float8",
                    f"({is_float} AND {in_range})",
                    f"{is_float} AND {number_in_range}",
                ),
                alt(
                    UNK,
                    "number",
                    "",
                    f"({is_float} AND NOT {in_range})",
                    f"{is_float} AND NOT {number_in_range}",
                ),
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
        if isinstance(key, str):
            index = self.param(key, "text")
        elif INT4_MIN <= key <= INT4_MAX:
            index = self.param(key, "int")
        else:  # no list has such an item (PostgreSQL's `->` takes an int4): null, as in Python
            index = "NULL::int"
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
        branches = " ".join(
            f"WHEN {a.cond or 'TRUE'} THEN ({a.expr}) -> {index}" for a in containers
        )
        return self.jsonb(f"(CASE {branches} END)")

    def prefilter(self, node: Node) -> str | None:
        """A condition every row the rule selects meets: `trait == 'text'` and
        `trait in ['text', ...]` become JSON containment, combined through and/or."""
        if isinstance(node, BoolOp):
            parts = [self.prefilter(value) for value in node.values]
            if node.op == "and":
                return all_of(*(p for p in parts if p is not None))
            return None if any(p is None for p in parts) else any_of(*parts)  # type: ignore[arg-type]
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
        elif op == "in" and is_literal_list(right):
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
            documents.append(
                f"{self.profile.traits()} @> {self.param(json.dumps(document), 'jsonb')}"
            )
        return any_of(*documents)

    def _trait_keys(self, node: Node | None) -> list[str] | None:
        """The keys of `profile.a.b` when it reads the stored traits only."""
        if not isinstance(node, Path) or node.root != "profile" or not node.keys:
            return None
        keys = list(node.keys)
        if keys[0] in self.profile.keys or not all(
            isinstance(k, str) and "\x00" not in k for k in keys
        ):
            return None
        return keys  # type: ignore[return-value]

    def state(self, node: Node) -> State:
        """The set of outcomes of `node` used as a condition (its truthiness)."""
        if reads_no_data(node):
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
        if isinstance(node, Call) and node.name in PREDICATES:
            return self.predicate(node)
        return self.truth(self.value(node))

    def truth(self, val: Val) -> State:
        branches: list[tuple[Alt, State]] = []
        for a in val.alts:
            if a.const is not NOT_CONST:
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

    def event_count(self, node: Call) -> Val:
        """events_in_last(name, days=N | hours=N) with constant arguments: the Python function
        itself checks them and works out the window (an error, or None without one, is the
        value of every row); the count is the row's events of that name since then, as the
        Python evaluator counts them, made once a row in a LATERAL join however often the rule
        reads it (index probes of event (customer, name, timestamp))."""
        if not all(reads_no_data(arg) for arg in (*node.args, *(value for _, value in node.kwargs))):
            raise NotTranslatable("events_in_last() of a name or window read from the data")
        asked: list[tuple[str, dt.datetime]] = []

        def counter(name: str, since: dt.datetime) -> int:
            asked.append((name, since))
            return 0

        ok, value = self.fold(node, events_in_last=counter)
        if not ok:
            return Val((Alt(ERR),))
        if not asked:
            return self.const(value)
        ((name, since),) = asked
        if "\x00" in name:
            raise NotTranslatable("text with a NUL character")
        count = self.profile.event_count(self.param(name, "text"), self.param(since.isoformat(), "timestamptz"),
                                         self.events_floor(since))
        return Val((Alt(INT, None, self.lateral(f"(({count}))::numeric")),))

    def fold(self, node: Node, events_in_last=None) -> tuple[bool, object]:
        """Evaluate a part that reads no data with the Python compiler itself."""
        function = _load(node, fast=False, text="<constant>")[1]["_rule"]
        ctx = RuleContext(now=self.now, events_in_last=events_in_last)
        try:
            return True, function(ctx.event, ctx.profile, ctx.context, ctx.journey, ctx)
        except Exception:  # noqa: BLE001 - a constant error is the outcome E
            return False, None

    def value(self, node: Node) -> Val:
        if reads_no_data(node):
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
            if node.name == "events_in_last":
                return self.event_count(node)
            if node.name in PREDICATES:
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
