"""Comparisons (==, <, in, ...) and predicates (contains, starts_with, exists) with Python's rules."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

from ..nodes import Compare, Const, ListExpr, Node
from .outcomes import ANY, E, F, State, T, bool_state, by_code_point, case, s_and, s_not, s_or
from .values import (
    DATE,
    DICT,
    ERR,
    EXACT_INT,
    FLOAT,
    LIST,
    NOT_CONST,
    NULL,
    NUMBERS,
    PROFILE,
    STR,
    TS,
    UNK,
    Alt,
    NotTranslatable,
    Val,
    number_view,
)

if TYPE_CHECKING:
    from ..nodes import Call


def mirror(op: str) -> str:
    return {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "=="}[op]


SQL_OP = {"==": "=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


PY_OP: dict[str, Callable[[object, object], bool]] = {
    "==": lambda a, b: a == b,
    "<": lambda a, b: a < b,  # type: ignore[operator]
    "<=": lambda a, b: a <= b,  # type: ignore[operator]
    ">": lambda a, b: a > b,  # type: ignore[operator]
    ">=": lambda a, b: a >= b,  # type: ignore[operator]
}


def is_null_literal(node: Node) -> bool:
    return isinstance(node, Const) and node.value is None


def is_literal_list(node: Node) -> bool:
    return isinstance(node, ListExpr) and all(isinstance(item, Const) for item in node.items)


class Comparisons:
    """The comparison half of the Translator (a mixin: it uses param/value/jsonb/alias)."""

    def compare(self, node: Compare) -> State:
        """A chain `a < b <= c` is `a < b and b <= c`, each operand evaluated once (codegen.compare)."""
        operands, ops = node.operands, node.ops
        last = len(operands) - 1
        for i, op in enumerate(ops):  # a pair that can never hold makes the whole chain false
            left, right = operands[i], operands[i + 1]
            if op in SQL_OP and op != "==" and (is_null_literal(left) or is_null_literal(right)):
                return F
            if op == "in" and (
                is_null_literal(right) or (is_null_literal(left) and not is_literal_list(right))
            ):
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
            elif op in SQL_OP:
                s = self.pair(
                    val(i),
                    val(i + 1),
                    order="LR",
                    null=F,
                    cmp=lambda a, b, op=op: self.order(op, a, b),
                )
            else:
                negate = op == "not in"
                if is_null_literal(right):
                    s = T  # `x not in null`
                elif is_literal_list(right):
                    s = self.member_const(val(i), [item.value for item in right.items])  # type: ignore[union-attr]
                    if negate:
                        s = s_not(s)
                elif is_null_literal(left):
                    s = T  # `null not in x`
                elif isinstance(
                    right, ListExpr
                ):  # `x in [profile.a, 'b']`: equal to one of the items
                    list_first = negate and i + 1 != last
                    s = self.member_items(
                        val(i), [self.value(item) for item in right.items], negate, list_first
                    )
                elif not negate:
                    s = self.pair(val(i), val(i + 1), order="LR", null=F, cmp=self.contains_in)
                else:
                    shared = i + 1 != last and not isinstance(right, Const)
                    s = self.pair(
                        val(i),
                        val(i + 1),
                        order="RL" if shared else "LR",
                        null=T,
                        cmp=lambda a, b: s_not(self.contains_in(a, b)),
                    )
            result = s_and(result, s)
        return result

    def pair(
        self, left: Val, right: Val, *, order: str, null: State, cmp: Callable[[Alt, Alt], State]
    ) -> State:
        """The outcome of `left <op> right` over every pair of alternatives.

        order "both": both sides are evaluated (an error on either side raises);
        "LR"/"RL": that side first, and a null there decides (`null`) without the other.
        """

        def compared(a: Alt, b: Alt) -> State:
            """cmp, except that a number we cannot read exactly meets something that is not a number."""
            if a.cat == UNK or b.cat == UNK:
                known = b if a.cat == UNK else a
                unread = a if a.cat == UNK else b
                if (
                    unread.label != "number"
                    or known.cat in NUMBERS
                    or known.cat in (UNK, ERR, PROFILE)
                ):
                    return ANY
                stand_in = Alt(
                    FLOAT, unread.cond, "", switch=unread.switch, label=unread.label, sub=unread.sub
                )
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
        if a.const is not NOT_CONST and b.const is not NOT_CONST:
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
            return bool_state(f"{by_code_point(a.expr)} = {by_code_point(b.expr)}")
        if a.cat in (LIST, DICT):
            exact = any(
                x.const is not NOT_CONST and all(i is None or isinstance(i, str) for i in x.const)  # type: ignore[attr-defined]
                for x in (a, b)
            )
            if exact:  # jsonb equality is Python's when one side holds only text and nulls
                return bool_state(f"{a.expr} = {b.expr}")
            # Equal JSON is equal in Python; unequal JSON may still be ([1] == [true]).
            return f"(CASE WHEN {a.expr} = {b.expr} THEN 2 ELSE 3 END)"
        return bool_state(f"{a.expr} = {b.expr}")  # datetimes, dates

    def order(self, op: str, a: Alt, b: Alt) -> State:
        """Python's `a < b` (etc.) for two present alternatives."""
        if a.const is not NOT_CONST and b.const is not NOT_CONST:
            try:
                return T if PY_OP[op](a.const, b.const) else F
            except TypeError:
                return E
        if a.cat in NUMBERS and b.cat in NUMBERS:
            return self.numbers(op, a, b)
        if a.cat == b.cat == STR:
            return bool_state(f"{by_code_point(a.expr)} {op} {by_code_point(b.expr)}")
        if a.cat == b.cat and a.cat in (TS, DATE):
            return bool_state(f"{a.expr} {op} {b.expr}")
        if a.cat == b.cat == LIST:
            return ANY  # element by element, and the elements may not compare
        return E

    def numbers(self, op: str, a: Alt, b: Alt) -> State:
        """Numbers compare by value, exactly as Python does (booleans are 0 and 1)."""
        (ka, ea, ca), (kb, eb, cb) = number_view(a), number_view(b)
        sql_op = SQL_OP[op]
        if ca is not NOT_CONST and cb is not NOT_CONST:
            return T if PY_OP[op](ca, cb) else F
        if ka == kb:  # numeric against numeric, or float8 against float8
            return bool_state(f"{ea} {sql_op} {eb}")
        if ka == "float":  # make it `integer op float`
            (ea, ca), (eb, cb), op = (eb, cb), (ea, ca), mirror(op)
            sql_op = SQL_OP[op]
        if cb is not NOT_CONST:  # against a constant float: compare with its exact decimal value
            if math.isinf(cb):  # type: ignore[arg-type]
                return T if PY_OP[op](0, cb) else F
            return bool_state(f"{ea} {sql_op} {self.param(str(Decimal(cb)), 'numeric')}")  # type: ignore[arg-type]
        if ca is not NOT_CONST:  # a constant integer against a float
            try:
                near = float(ca)  # type: ignore[arg-type]
            except OverflowError:
                raise NotTranslatable("an integer beyond the float range") from None
            if near == ca:
                return bool_state(f"{self.param(repr(near), 'float8')} {sql_op} {eb}")
            low, high = (
                (near, math.nextafter(near, math.inf))
                if near < ca
                else (math.nextafter(near, -math.inf), near)
            )  # type: ignore[operator]
            if op == "==":
                return F
            if op in ("<", "<="):  # ca < f  <=>  f >= high
                return bool_state(f"{eb} >= {self.param(repr(high), 'float8')}")
            return bool_state(f"{eb} <= {self.param(repr(low), 'float8')}")
        exact = bool_state(f"({ea})::float8 {sql_op} {eb}")
        return f"(CASE WHEN abs({ea}) <= {EXACT_INT} THEN {exact} ELSE 3 END)"

    def contains_in(self, needle: Alt, hay: Alt) -> State:
        """Python's `needle in hay` for two present alternatives."""
        if needle.const is not NOT_CONST and hay.const is not NOT_CONST:
            try:
                return T if needle.const in hay.const else F  # type: ignore[operator]
            except TypeError:
                return E
        if hay.cat == STR:
            if needle.cat != STR:
                return E  # 'in <string>' requires string as left operand
            return bool_state(
                f"strpos({by_code_point(hay.expr)}, {by_code_point(needle.expr)}) > 0"
            )
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
            found = f"({by_code_point(key)} = ANY({names}) OR {found})"
        return bool_state(found)

    def list_member(self, needle: Alt, array: str) -> State:
        """Python's `needle in a_json_list`: equal to one of its items."""
        if needle.cat == STR:  # @> finds text among the top-level items only, as wanted
            return bool_state(f"({array}) @> jsonb_build_array({needle.expr})")
        if needle.cat in (TS, DATE):
            return F
        if needle.cat == PROFILE:
            raise NotTranslatable("the whole profile in a list")
        if not needle.expr:  # a number SQL cannot read exactly (pair's stand-in): Python compares it
            return ANY
        x = self.alias()
        item = self.jsonb(f"{x}.v")
        s = self.pair(
            item,
            Val((Alt(needle.cat, None, needle.expr, needle.const),)),
            order="both",
            null=F,
            cmp=self.eq,
        )
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
            elif a.const is not NOT_CONST:
                try:
                    s = T if a.const in frozenset(items) else F
                except TypeError:
                    s = E
            elif a.cat == NULL:
                s = T if None in items else F
            elif a.cat in (LIST, DICT, PROFILE):
                s = E  # unhashable
            elif a.cat == STR:
                s = (
                    bool_state(f"{by_code_point(a.expr)} = ANY({self.param(strings, 'text[]')})")
                    if strings
                    else F
                )
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
            built = s_and(
                built,
                case([(a, E if a.cat == ERR else ANY if a.cat == UNK else T) for a in item.alts]),
            )
        null = T if negate else F

        def against(a: Alt) -> State:
            if a.cat == ERR:
                return E
            if a.cat == NULL:
                return null
            found: State = F
            for item in items:
                present = (
                    Val(tuple(b for b in item.alts if b.cat not in (ERR, UNK)))
                    if item.alts
                    else item
                )
                if present.alts:
                    found = s_or(
                        found, self.pair(Val((a,)), present, order="both", null=F, cmp=self.eq)
                    )
            return s_not(found) if negate else found

        if list_first:
            return s_and(built, case([(a, against(a)) for a in needle.alts]))
        return case(
            [
                (a, E if a.cat == ERR else null if a.cat == NULL else s_and(built, against(a)))
                for a in needle.alts
            ]
        )

    def _member_numbers(self, a: Alt, numbers: list[bool | int | float]) -> State:
        kind, expr, _ = number_view(a)
        if kind == "int":  # equal to an integer, or to a float with that exact value
            exact = sorted(
                {
                    int(n)
                    for n in numbers
                    if not isinstance(n, float) or (math.isfinite(n) and n.is_integer())
                }
            )
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
        texts = [
            repr(n) if math.isfinite(n) else ("Infinity" if n > 0 else "-Infinity")
            for n in sorted(floats)
        ]
        return bool_state(f"{expr} = ANY({self.param(texts, 'float8[]')})")

    def predicate(self, node: Call) -> State:
        name = node.name
        if name == "exists":
            arg = node.args[0]
            val = self.value(arg)
            return case(
                [
                    (a, E if a.cat == ERR else ANY if a.cat == UNK else F if a.cat == NULL else T)
                    for a in val.alts
                ]
            )
        hay, needle = (self.value(arg) for arg in node.args)
        if name == "contains":
            return self.pair(hay, needle, order="both", null=F, cmp=self._contains)
        return self.pair(
            hay, needle, order="both", null=F, cmp=lambda a, b: self._affix(name, a, b)
        )

    def _contains(self, hay: Alt, needle: Alt) -> State:
        """functions.f_contains: null haystack is false; a dict with an unhashable needle too."""
        if hay.cat == NULL:
            return F
        if hay.const is not NOT_CONST and needle.const is not NOT_CONST:
            try:
                return T if needle.const in hay.const else F  # type: ignore[operator]
            except TypeError:
                return E if not isinstance(hay.const, list) else F
        if hay.cat == STR:
            if needle.cat == NULL:
                return F
            if needle.cat != STR:
                return E
            return bool_state(
                f"strpos({by_code_point(hay.expr)}, {by_code_point(needle.expr)}) > 0"
            )
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
