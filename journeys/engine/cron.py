"""A five-field cron matcher (minute hour day-of-month month day-of-week)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
_NAMES = ["minute", "hour", "day of month", "month", "day of week"]


def _field(text: str, low: int, high: int, name: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"cron {name}: bad step {step_text!r}")
            step = int(step_text)
        if part == "*":
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            if not (a.isdigit() and b.isdigit()):
                raise ValueError(f"cron {name}: bad range {part!r}")
            start, end = int(a), int(b)
        elif part.isdigit():
            start = end = int(part)
        else:
            raise ValueError(f"cron {name}: {part!r} is not a number, range or *")
        if name == "day of week" and end == 7:
            end = 7
        if start < low or end > (7 if name == "day of week" else high) or start > end:
            raise ValueError(f"cron {name}: {part!r} is outside {low}-{high}")
        values.update(v % 7 if name == "day of week" else v for v in range(start, end + 1, step))
    return frozenset(values)


class Cron(NamedTuple):
    minute: frozenset[int]
    hour: frozenset[int]
    dom: frozenset[int]
    month: frozenset[int]
    dow: frozenset[int]
    either_day: bool  # both day fields restricted: either one matching is enough (as cron reads them)


def parse_cron(expr: str) -> Cron:
    """Parse e.g. '0 9 * * 1-5'; raises ValueError naming the bad field."""
    parts = (expr or "").split()
    if len(parts) != 5:
        raise ValueError("cron needs 5 fields: minute hour day-of-month month day-of-week")
    fields = [_field(p, lo, hi, n) for p, (lo, hi), n in zip(parts, _RANGES, _NAMES)]
    # Vixie cron and its heirs: '0 9 1,15 * 1' runs on the 1st, the 15th and every Monday; a day
    # field written with * (also */2) leaves the other one alone to decide.
    either_day = not parts[2].startswith("*") and not parts[4].startswith("*")
    return Cron(*fields, either_day=either_day)


def cron_matches(cron: Cron, moment: datetime) -> bool:
    on_dom = moment.day in cron.dom
    on_dow = (moment.isoweekday() % 7) in cron.dow
    return (
        moment.minute in cron.minute
        and moment.hour in cron.hour
        and moment.month in cron.month
        and ((on_dom or on_dow) if cron.either_day else (on_dom and on_dow))
    )


def cron_fires(cron: Cron, moment: datetime, zone: ZoneInfo) -> bool:
    """Whether a schedule read on `zone`'s wall clock fires at the UTC minute `moment`.

    A local time that does not exist (skipped when clocks spring forward) fires once, at the
    first real minute after the jump; a local time that happens twice (clocks fall back) fires
    at its first occurrence only, unless the schedule runs every hour anyway (`* * * * *`,
    `*/15 * * * *`), whose second pass through the repeated hour is an hour like any other."""
    local = moment.astimezone(zone)
    wall = local.replace(tzinfo=None, fold=0)
    if cron_matches(cron, wall):
        return local.fold == 0 or len(cron.hour) == 24
    before = (moment - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None)
    skipped = before + timedelta(minutes=1)
    while skipped < wall:  # the wall-clock minutes the jump left out (none on most minutes)
        if cron_matches(cron, skipped):
            return True
        skipped += timedelta(minutes=1)
    return False
