"""A version's business hours: when new entries from time-driven triggers may start.

Stored on `WorkflowVersion.business_hours` as {"days": [0, 1, 2, 3, 4], "start": "09:00",
"end": "17:00"} (Monday = 0), read in each customer's own timezone; {} means any time.
People type it as text ("Mon-Fri 09:00-17:00", "Mon,Wed,Sat 10:00-12:30", "daily 08:00-20:00");
`business_hours_parse` turns that text into the stored form and names what is wrong with it.
An entry outside the window waits (a run not yet started) until the window next opens.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAYS = {name.lower(): i for i, name in enumerate(DAY_NAMES)}
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_TEXT = re.compile(r"^\s*(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")


class BusinessHoursError(ValueError):
    """What is wrong with a business-hours setting, in words a person can act on."""


def _clock(text: str, what: str, *, end: bool = False) -> str:
    text = text.strip()
    if len(text) == 4:
        text = "0" + text
    if end and text == "24:00":
        return text
    if not _TIME.match(text):
        raise BusinessHoursError(f"{what} time {text!r} must be HH:MM (24-hour), e.g. 09:00")
    return text


def business_hours_clean(value: object) -> dict:
    """Validate the stored form (also what an imported version JSON carries); returns it normalised."""
    if value in (None, "", {}):
        return {}
    if not isinstance(value, dict):
        raise BusinessHoursError('must be {"days": [0-6, Monday = 0], "start": "HH:MM", "end": "HH:MM"} or empty')
    unknown = set(value) - {"days", "start", "end"}
    if unknown:
        raise BusinessHoursError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}: use days, start and end")
    days = value.get("days")
    if not isinstance(days, list) or not days or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 6 for d in days):
        raise BusinessHoursError("days must be a non-empty list of weekdays 0-6 (Monday = 0)")
    start = _clock(str(value.get("start", "")), "start")
    end = _clock(str(value.get("end", "")), "end", end=True)
    if end <= start:
        raise BusinessHoursError(f"end {end} must be later than start {start} (a window within one day)")
    return {"days": sorted(set(days)), "start": start, "end": end}


def business_hours_parse(text: str) -> dict:
    """'Mon-Fri 09:00-17:00' -> the stored form; an empty text means any time."""
    text = (text or "").strip()
    if not text:
        return {}
    match = _TEXT.match(text)
    if not match:
        raise BusinessHoursError("write days then hours, e.g. 'Mon-Fri 09:00-17:00' or 'daily 08:00-20:00'")
    days: set[int] = set()
    for part in match["days"].lower().split(","):
        if part in ("daily", "all", "every"):
            days.update(range(7))
        elif "-" in part:
            first, _, last = part.partition("-")
            if first not in _DAYS or last not in _DAYS:
                raise BusinessHoursError(f"unknown day range {part!r}: use Mon, Tue, Wed, Thu, Fri, Sat, Sun")
            a, b = _DAYS[first], _DAYS[last]
            days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
        elif part in _DAYS:
            days.add(_DAYS[part])
        else:
            raise BusinessHoursError(f"unknown day {part!r}: use Mon, Tue, Wed, Thu, Fri, Sat, Sun (or daily)")
    return business_hours_clean({"days": sorted(days), "start": match["start"], "end": match["end"]})


def business_hours_text(value: dict | None) -> str:
    """The stored form as people type it (the admin field shows this)."""
    if not value:
        return ""
    days = sorted(value.get("days") or [])
    if days == list(range(7)):
        label = "daily"
    else:
        runs: list[list[int]] = []
        for d in days:
            if runs and runs[-1][-1] == d - 1:
                runs[-1].append(d)
            else:
                runs.append([d])
        label = ",".join(DAY_NAMES[r[0]] if len(r) == 1 else f"{DAY_NAMES[r[0]]}-{DAY_NAMES[r[-1]]}" for r in runs)
    return f"{label} {value.get('start')}-{value.get('end')}"


def _at(day: date, clock: str, zone: ZoneInfo) -> datetime:
    if clock == "24:00":
        return datetime.combine(day + timedelta(days=1), time(0, 0), tzinfo=zone)
    hour, minute = (int(p) for p in clock.split(":"))
    return datetime.combine(day, time(hour, minute), tzinfo=zone)


def business_hours_next_open(hours: dict | None, *, now: datetime, zone: ZoneInfo) -> datetime | None:
    """None when an entry may start now; otherwise the moment (UTC) the window next opens on the
    customer's clock. A start time that the clocks skip (DST) opens as Python reads it (02:30 on
    a spring-forward night is 03:30)."""
    if not hours:
        return None
    local = now.astimezone(zone)
    days = set(hours["days"])
    for ahead in range(8):
        day = local.date() + timedelta(days=ahead)
        if day.weekday() not in days:
            continue
        opens, closes = _at(day, hours["start"], zone), _at(day, hours["end"], zone)
        if ahead == 0 and opens <= local < closes:
            return None
        if local < opens:
            return opens.astimezone(ZoneInfo("UTC"))
    return None  # unreachable with at least one day: the same weekday comes round within 7 days
