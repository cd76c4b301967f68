"""A five-field cron matcher (minute hour day-of-month month day-of-week)."""

from __future__ import annotations

from datetime import datetime

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


def parse_cron(expr: str) -> list[frozenset[int]]:
    """Parse e.g. '0 9 * * 1-5'; raises ValueError naming the bad field."""
    parts = (expr or "").split()
    if len(parts) != 5:
        raise ValueError("cron needs 5 fields: minute hour day-of-month month day-of-week")
    return [_field(p, lo, hi, n) for p, (lo, hi), n in zip(parts, _RANGES, _NAMES)]


def cron_matches(fields: list[frozenset[int]], moment: datetime) -> bool:
    minute, hour, dom, month, dow = fields
    return (
        moment.minute in minute
        and moment.hour in hour
        and moment.day in dom
        and moment.month in month
        and (moment.isoweekday() % 7) in dow
    )
