"""Values computed by operators (+ - * /, unary -) and functions (lower, len, days_since, ...)."""

from __future__ import annotations

from collections.abc import Callable

from ..nodes import BinOp, Call
from .comparisons import is_null_literal
from .dates import MAYBE_A_DATE, NOT_A_DATE, iso_moment_sql
from .outcomes import all_of, any_of, by_code_point, guarded, negation
from .values import (
    BOOL,
    DATE,
    DICT,
    ERR,
    EXACT_INT,
    FLOAT,
    INT,
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
    to_number,
)

PREDICATES = frozenset({"contains", "starts_with", "ends_with", "exists"})


VALUE_FUNCTIONS = frozenset(
    {
        "lower",
        "upper",
        "len",
        "abs",
        "int",
        "float",
        "coalesce",
        "days_since",
        "hours_since",
        "days_until",
        "date",
        "datetime",
    }
)


def is_ascii(text: str) -> str:
    return f"(octet_length({text}) = char_length({text}))"


class Functions:
    """The operator and function half of the Translator (a mixin)."""

    def map(self, val: Val, fn: Callable[[Alt], list[Alt]]) -> Val:
        """Apply fn to each present alternative; errors and unknowns pass through."""
        out: list[Alt] = []
        for a in val.alts:
            if a.cat in (ERR, UNK):
                out.append(a)
                continue
            for b in fn(a):
                cond = a.cond if b.cond is None else guarded(a.cond, b.cond)
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
        if node.op in ("+", "-", "/") and (
            is_null_literal(node.left) or is_null_literal(node.right)
        ):
            return self.const(None)
        left, right = self.value(node.left), self.value(node.right)
        both = node.op == "*"  # `*` evaluates both sides first; the others stop at a null left
        out: list[Alt] = []
        for a in left.alts:
            if a.cat in (ERR, UNK) or (a.cat == NULL and not both):
                out.append(a)
                continue
            for b in right.alts:
                cond = all_of(a.cond, b.cond)
                if b.cat == ERR or a.cat == ERR:
                    results = [Alt(ERR)]
                elif a.cat == UNK or b.cat == UNK:
                    results = [Alt(UNK)]
                elif a.cat == NULL or b.cat == NULL:
                    results = [Alt(NULL)]
                else:
                    results = self.arith(node.op, a, b)
                for r in results:
                    out.append(
                        Alt(r.cat, cond if r.cond is None else guarded(cond, r.cond), r.expr)
                    )
        return Val(tuple(out))

    def arith(self, op: str, a: Alt, b: Alt) -> list[Alt]:
        """`a op b` for two present alternatives: one result, or results split by conditions."""
        if a.cat in NUMBERS and b.cat in NUMBERS:
            (ka, ea, _), (kb, eb, _) = number_view(a), number_view(b)
            if op in ("+", "-", "*") and ka == kb == "int":
                return [Alt(INT, None, f"({ea} {op} {eb})")]
            # Python converts integers to float (exact up to 2**53); float8 arithmetic is
            # IEEE like Python's, but PostgreSQL raises on overflow/underflow: stay well
            # inside the range, and leave the rest to Python.
            fa = ea if ka == "float" else f"({ea})::float8"
            fb = eb if kb == "float" else f"({eb})::float8"
            exact = all_of(
                *(f"abs({e}) <= {EXACT_INT}" for k, e in ((ka, ea), (kb, eb)) if k == "int")
            )
            small = all_of(*(f"({x} = 0 OR abs({x}) BETWEEN 1e-150 AND 1e150)" for x in (fa, fb)))
            safe = guarded(exact, small or "TRUE")
            if op != "/":
                result = Alt(FLOAT, None, f"({fa} {op} {fb})")
                return [Alt(FLOAT, safe, result.expr), Alt(UNK, negation(safe))]
            zero = f"(({eb}) = 0)"
            fine = all_of(negation(zero), safe)
            return [
                Alt(ERR, zero),
                Alt(FLOAT, fine, f"({fa} / {fb})"),
                Alt(UNK, all_of(negation(zero), negation(safe))),
            ]
        if op == "+" and a.cat == b.cat and a.cat in (STR, LIST):
            return [Alt(a.cat, None, f"({a.expr} || {b.expr})")]
        if op == "-" and a.cat == b.cat and a.cat in (TS, DATE):
            raise NotTranslatable("date differences (timedelta)")
        return [Alt(ERR)]

    def call(self, node: Call) -> Val:
        name = node.name
        if name not in VALUE_FUNCTIONS:
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
                return [
                    Alt(STR, is_ascii(a.expr), f"{name}({by_code_point(a.expr)})"),
                    Alt(UNK, negation(is_ascii(a.expr))),
                ]

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
                    return [
                        Alt(
                            INT,
                            None,
                            f"(SELECT count(*) FROM jsonb_object_keys({a.expr}))::numeric",
                        )
                    ]
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
            return self.map(arg, lambda a: to_number(name, a))
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
                lambda a: (
                    [Alt(NULL)]
                    if a.cat == NULL
                    else [Alt(DATE, None, f"(({a.expr}) AT TIME ZONE 'UTC')::date")]
                ),
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
            text = a.expr if a.const is not NOT_CONST else self.lateral(a.expr)
            parsed = self.lateral(iso_moment_sql(text))
            return [
                Alt(TS, f"({parsed} > {NOT_A_DATE} AND {parsed} < {MAYBE_A_DATE})", parsed),
                Alt(ERR, f"({parsed} = {NOT_A_DATE})"),
                Alt(UNK, f"({parsed} = {MAYBE_A_DATE})"),
            ]

        return self.map(val, to_moment)

    def coalesce(self, vals: list[Val]) -> Val:
        """The first present argument; every argument is evaluated first (errors raise)."""
        errs = [a.cond for v in vals for a in v.alts if a.cat == ERR]
        unks = [a.cond for v in vals for a in v.alts if a.cat == UNK]
        failed = any_of(*errs) if errs else "FALSE"
        unsure = any_of(*unks) if unks else "FALSE"
        clean = all_of(negation(failed), negation(unsure))
        out: list[Alt] = [Alt(ERR, failed), Alt(UNK, all_of(negation(failed), unsure))]
        before_null: str | None = "TRUE"
        for v in vals:
            for a in v.alts:
                if a.cat not in (NULL, ERR, UNK):
                    out.append(
                        Alt(a.cat, all_of(clean, before_null, a.cond) or "TRUE", a.expr, a.const)
                    )
            nulls = [a.cond for a in v.alts if a.cat == NULL]
            before_null = all_of(before_null, any_of(*nulls) if nulls else "FALSE")
        out.append(Alt(NULL, all_of(clean, before_null) or "TRUE"))
        return Val(tuple(a for a in out if a.cond != "FALSE"))
