"""When a rule's answer for a row can next change with time alone (its data unchanged).

Only a few parts of a rule read the clock: `now()`, `today()`, `days_since()`, `hours_since()`,
`days_until()`, `events_in_last()`, and the profile's `tenure_days` and `days_since_last_seen`
(and the whole `profile`, which holds them). Between the moments where one of those values
changes, the rule's answer cannot change; so a row whose data does not change need not be
evaluated again before the earliest such moment. `due_sql` gives that moment as SQL over the row,
a lower bound (evaluating earlier is only wasted work, later would miss a change):

- a clock value compared with numbers (`profile.days_since_last_seen > 30`, `0 < days_since(x) < 7`):
  these values move one way by at most one a day (an hour for `hours_since`), so `v op k` cannot
  change before |k - v| days have passed (less a minute for float rounding), and never once v
  has moved past k; the attributes are whole days (rounded down), which cannot change the
  answer before the days before rounding reach the next whole number past v and at least k;
- `events_in_last(name, days=N)` anywhere: the count changes with time only when the oldest
  event it counts leaves the window (the first such event's timestamp + N days); a new event
  changes the data, which is the caller's to notice;
- a date compared with `today()`: that date's midnight (UTC), or the next one when it is today;
  never once it is past (today only moves forward);
- `today()` otherwise: the next midnight (UTC);
- a clock value used otherwise (in arithmetic, compared with data): now, for the rows where it
  has a value (null or an error stays so);
- anything else that reads the clock (`now()`, the whole `profile`): now for every row.

A rule reading no clock has no bound (NULL: its answer changes only with the data).
"""

from __future__ import annotations

import datetime as dt

from ..nodes import Call, Compare, Node, Path, children, reads_no_data
from .values import DATE, NUMBERS, UNK, number_view

CLOCK_CALLS = frozenset({"now", "today", "days_since", "hours_since", "days_until", "events_in_last"})
# (unit, slack, direction): the unit each clock value moves in at one a unit (in seconds: an
# interval of days would follow the session's time zone), the slack of the bound in units (a
# minute: float rounding) and the way it moves (up; days_until down).
RATES = {"days_since": (86400, 1 / 1440, 1), "days_until": (86400, 1 / 1440, -1), "hours_since": (3600, 1 / 60, 1)}
CLOCK_ATTRIBUTES = {"tenure_days": (86400, 1 / 1440, 1), "days_since_last_seen": (86400, 1 / 1440, 1)}
ORDERING = frozenset({"==", "!=", "<", "<=", ">", ">="})
HORIZON_UNITS = 36500  # a bound further away than this many units is cut to it (still a lower bound)


def reads_clock(node: Node) -> bool:
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Call) and current.name in CLOCK_CALLS:
            return True
        if isinstance(current, Path) and current.root == "profile" and (
            not current.keys or current.keys[0] in CLOCK_ATTRIBUTES
        ):
            return True
        stack.extend(children(current))
    return False


def due_sql(tr, tree: Node) -> str | None:
    """SQL (timestamptz) of the earliest moment after `tr.now` at which the rule's answer for
    the row may differ, its data unchanged; NULL or None where it never will; `tr.now` where
    this cannot tell. `tr` is the Translator of the rule's state (parameters and LATERAL
    joins are shared with it)."""
    bounds: list[str] = []
    if not _bounds(tr, tree, bounds):
        return tr.now_sql()
    if not bounds:
        return None
    return bounds[0] if len(bounds) == 1 else f"LEAST({', '.join(bounds)})"


def _bounds(tr, node: Node, out: list[str]) -> bool:
    """Append the bounds of `node`'s clock parts to `out`; False when one has none."""
    if not reads_clock(node):
        return True
    if isinstance(node, Compare):
        direct = _compared_with_numbers(tr, node)
        if direct is not None:
            atom, numbers = direct
            out.extend(_approach(tr, atom, k) for k in numbers)
            return True
        dates = _compared_with_today(tr, node)
        if dates is not None:
            out.extend(dates)
            return True
    if isinstance(node, Call) and node.name in CLOCK_CALLS and any(reads_clock(c) for c in children(node)):
        return False  # a clock value of a clock value (`hours_since(today())`): every time
    if isinstance(node, Call) and node.name == "events_in_last":
        bound = _first_leaves(tr, node)
        if bound is not None:
            out.append(bound)
        return True  # its arguments are constants (or the rule is not translated at all)
    if isinstance(node, Call) and node.name == "today":
        tomorrow = dt.datetime.combine(tr.now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        out.append(tr.param(tomorrow, "timestamptz"))
        return True
    if _rate(node) is not None:  # used otherwise: every time, where it has a value at all
        out.append(_moving(tr, node))
        return True
    if isinstance(node, Call) and node.name == "now":
        return False
    if isinstance(node, Path):  # the whole profile, or a path into a clock attribute
        return False
    return all(_bounds(tr, child, out) for child in children(node))


def _rate(node: Node) -> tuple[int, float, int] | None:
    """(unit, slack, direction) of a clock value, for `days_since(x)` (x not reading the clock)
    and the clock attributes; None for anything else."""
    if isinstance(node, Call) and node.name in RATES and not node.kwargs and len(node.args) == 1:
        return None if reads_clock(node.args[0]) else RATES[node.name]
    if isinstance(node, Path) and node.root == "profile" and len(node.keys) == 1:
        return CLOCK_ATTRIBUTES.get(node.keys[0])  # type: ignore[arg-type]
    return None


def _compared_with_numbers(tr, node: Compare) -> tuple[Node, list[float]] | None:
    """(the clock value, the numbers) of `value op k [op k2 ...]` with one clock value and constants
    otherwise; None for any other comparison. Constants that are not numbers compare with a number
    (or None) the same way at any time, so they bound nothing."""
    if not all(op in ORDERING for op in node.ops):
        return None
    atoms = [operand for operand in node.operands if reads_clock(operand)]
    if len(atoms) != 1 or _rate(atoms[0]) is None:
        return None
    numbers = []
    for operand in node.operands:
        if operand is atoms[0]:
            continue
        if not _constant(operand):
            return None
        ok, value = tr.fold(operand)
        if not ok:
            return None
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int | float):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond the floats: as far as the floats go
                number = 1e300 if value > 0 else -1e300
            numbers.append(max(-1e300, min(1e300, number)))
    return atoms[0], numbers


def _compared_with_today(tr, node: Compare) -> list[str] | None:
    """`x op today()` (x not reading the clock): today() only moves forward, so against a date
    x the answer can change when today reaches x (at x's midnight, or the next one when x is
    today) and never once x is past; against anything else (null, text, a datetime) it is the
    same at any time. None for any other comparison."""
    if not all(op in ORDERING for op in node.ops):
        return None
    clocks = [o for o in node.operands if reads_clock(o)]
    if len(clocks) != 1 or not (isinstance(clocks[0], Call) and clocks[0].name == "today" and not clocks[0].args):
        return None
    today = tr.param(tr.now.date(), "date")
    tomorrow = tr.param(dt.datetime.combine(tr.now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC),
                        "timestamptz")
    bounds = []
    for operand in node.operands:
        if operand is clocks[0]:
            continue
        branches = []
        for a in tr.value(operand).alts:
            if a.cat == DATE:
                moment = (f"CASE WHEN ({a.expr}) >= {today}"
                          f" THEN greatest((({a.expr})::timestamp AT TIME ZONE 'UTC'), {tomorrow}) END")
            elif a.cat == UNK:
                moment = tr.now_sql()
            else:
                continue
            branches.append(f"WHEN {a.cond or 'TRUE'} THEN {moment}")
        if branches:
            bounds.append(f"(CASE {' '.join(branches)} END)")
    return bounds


def _constant(node: Node) -> bool:
    return reads_no_data(node) and not reads_clock(node)


def _approach(tr, atom: Node, k: float) -> str:
    """When `atom` (moving one way by at most one a unit) may first reach k: |k - v| units from
    now, less the slack; never once it has moved past k (every comparison with k then stays)."""
    unit, slack, direction = _rate(atom)  # type: ignore[misc]
    target = tr.param(repr(k), "float8")
    whole = atom.keys[0] if isinstance(atom, Path) else None  # type: ignore[union-attr]
    branches = []
    for a in tr.value(atom).alts:
        if a.cat in NUMBERS:
            _, expr, _ = number_view(a)
            value = f"({expr})::float8"
            if whole is not None:
                # A whole number of days w: the answer can only change when w reaches an integer
                # past v and at least k, which happens when the days before rounding do.
                ahead = f"(greatest({value} + 1, ceil({target})) - {tr.profile.elapsed(whole, tr)})"
                behind = f"{value} <= {target}"
            else:
                ahead = f"({target} - {value})" if direction > 0 else f"({value} - {target})"
                behind = f"{ahead} >= 0"
            moment = (f"CASE WHEN {behind} THEN {tr.now_sql()}"
                      f" + least(greatest({ahead} - {slack!r}, 0), {HORIZON_UNITS}) * {unit} * interval '1 second' END")
        elif a.cat == UNK:
            moment = tr.now_sql()  # Python tells the value: evaluate every time
        else:
            continue  # null, or an error: the same at any time
        if a.cond is None:
            return moment if not branches else f"(CASE {' '.join(branches)} ELSE {moment} END)"
        branches.append(f"WHEN {a.cond} THEN {moment}")
    return f"(CASE {' '.join(branches)} END)" if branches else "NULL::timestamptz"


def _moving(tr, atom: Node) -> str:
    """Now, where `atom` is a number (or Python must tell); NULL where it is null or an error,
    which it stays at any time."""
    branches = [f"WHEN {a.cond or 'TRUE'} THEN {tr.now_sql()}" for a in tr.value(atom).alts
                if a.cat in NUMBERS or a.cat == UNK]
    return f"(CASE {' '.join(branches)} END)" if branches else "NULL::timestamptz"


def _first_leaves(tr, node: Call) -> str | None:
    """When the first event `events_in_last(...)` counts leaves its window; None when the
    arguments make it a constant (an error, or no window)."""
    asked: list[tuple[str, dt.datetime]] = []

    def counter(name: str, since: dt.datetime) -> int:
        asked.append((name, since))
        return 0

    ok, _ = tr.fold(node, events_in_last=counter)
    if not ok or not asked:
        return None
    ((name, since),) = asked
    first = tr.profile.event_first(tr.param(name, "text"), tr.param(since.isoformat(), "timestamptz"),
                                   tr.events_floor(since))
    window = tr.param(repr((tr.now - since).total_seconds()), "float8")
    return tr.lateral(f"({first}) + {window} * interval '1 second'")
