"""Durations as ops people write them: 90, "45s", "30m", "1h", "2d", "1w", "1h30m"."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

_PART = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_UNITS_DESCENDING = sorted(_UNITS.items(), key=lambda item: -item[1])


class DurationTooLong(ValueError):
    """A duration too long to represent (e.g. 99999999999999999999d)."""


def parse_duration(value: object, *, field: str = "duration") -> timedelta:
    """Parse a duration or raise ValueError naming the field and what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a duration like 30m, 1h, 2d or a number of seconds")
    try:
        if isinstance(value, (int, float)) and value >= 0:
            return timedelta(seconds=value)
        if isinstance(value, str):
            text = value.strip().lower().replace(" ", "")
            if text.isdigit():
                return timedelta(seconds=int(text))
            parts = _PART.findall(text)
            if parts and "".join(f"{n}{u}" for n, u in parts) == text:
                return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))
    except OverflowError:  # 99999999999999999999d: an error naming the field, not a 500
        raise DurationTooLong(f"{field}: {value!r} is too long a duration") from None
    except ValueError:  # NaN seconds
        pass
    raise ValueError(f"{field}: {value!r} is not a duration; write e.g. 30m, 1h, 2d or seconds")


def duration_text(seconds: Any) -> str:
    """Seconds as people write them (5400 -> 1h30m); anything else unchanged."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
        return "" if seconds in (None, 0) else str(seconds)
    parts = []
    for unit, size in _UNITS_DESCENDING:
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)
