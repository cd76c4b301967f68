"""Outcome sets: what a rule may do on one row, and the SQL that combines them.

Python's evaluation of a rule on a row ends one way: false (F), true (T), or raising
(E: the rule is then false). SQL that decides a part exactly gives one of them; a part
only Python can decide gives a set of several, and that row is evaluated in Python.
A set is a bitmask 1..7; `and`, `or` and `not` combine sets as Python's short circuits
do, through lookup tables (each operand appears once in the SQL).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

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


# --- SQL text helpers -------------------------------------------------------------------------


def all_of(*conds: str | None) -> str | None:
    parts = [c for c in conds if c is not None and c != "TRUE"]
    if "FALSE" in parts:
        return "FALSE"
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"


def guarded(cond: str | None, predicate: str) -> str:
    """`cond AND predicate`, with predicate evaluated only where cond holds."""
    if cond is None or cond == "TRUE":
        return predicate
    if cond == "FALSE":
        return "FALSE"
    return f"(CASE WHEN {cond} THEN {predicate} ELSE FALSE END)"


def negation(cond: str | None) -> str:
    if cond is None or cond == "TRUE":
        return "FALSE"
    if cond == "FALSE":
        return "TRUE"
    return f"(NOT {cond})"


def any_of(*conds: str | None) -> str:
    if any(c is None or c == "TRUE" for c in conds):
        return "TRUE"
    parts = [c for c in conds if c != "FALSE"]
    if not parts:
        return "FALSE"
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def by_code_point(expr: str) -> str:
    """Text compared by code point, whatever the database's collation."""
    return f'({expr}) COLLATE "C"'


def case(branches: Sequence[tuple[Any, State]]) -> State:
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
    if all(getattr(a, "switch", None) is not None for a in alts):
        switch = alts[0].switch  # type: ignore[union-attr]
        if all(a.switch == switch for a in alts):  # type: ignore[union-attr]
            groups: dict[str, list[tuple[Any, State]]] = {}
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
        cond = b if b is None or isinstance(b, str) else b.cond
        if s != default:
            if cond is None:  # pragma: no cover - only single alternatives lack a condition
                raise AssertionError("an alternative without a condition among several")
            rest.append((cond, s))
    whens = " ".join(f"WHEN {c} THEN {s}" for c, s in rest)
    return f"(CASE {whens} ELSE {default} END)"
