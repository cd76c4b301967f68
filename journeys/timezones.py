"""IANA time zone names as clients send them: one rule for every door a zone comes in by.

A profile's zone decides when its local-time messages go out and when quiet hours apply, so
a name the server cannot read is refused where it arrives (the tracking API, the traits API,
the admin form, a cron trigger's setting), naming the field, instead of being dropped while
the customer stays on UTC. Surrounding spaces and the letter case are forgiven
(`" asia/kolkata"` is `Asia/Kolkata`); offsets such as `+05:30` or `GMT+5` are not zones.
Pure functions: nothing here touches the database.
"""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from journeys.errors import EventValidationError

MAX_ZONE_LENGTH = 64


@lru_cache(maxsize=1)
def _zones_by_lower_name() -> dict[str, str]:
    return {name.lower(): name for name in available_timezones()}


def zone_canonical(name: object) -> str | None:
    """The zone's own spelling for `name` ("Asia/Kolkata" for " asia/kolkata"), or None when it
    names no zone this machine knows (paths, offsets, non-text)."""
    return _canonical(name.strip()) if isinstance(name, str) else None


@lru_cache(maxsize=4096)
def _canonical(text: str) -> str | None:
    if not 0 < len(text) <= MAX_ZONE_LENGTH:
        return None
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return _zones_by_lower_name().get(text.lower())
    return text


def zone_check(value: object, *, field: str) -> str:
    """A zone a client sent, in its canonical spelling; EventValidationError naming `field` otherwise."""
    zone = zone_canonical(value)
    if zone is None:
        shown = repr(value[:40]) if isinstance(value, str) else f"a {type(value).__name__}"
        raise EventValidationError(f"{shown} is not an IANA time zone; give a name such as Europe/Paris or "
                                   "America/New_York (offsets like +05:30 are not zones)", field=field)
    return zone


def traits_zone_checked(traits: dict, *, field: str = "traits") -> dict:
    """Identify traits with their `timezone` (the profile's zone) checked and spelled canonically;
    null or empty is left as sent (it sets no zone). Raises EventValidationError naming
    `<field>.timezone` for a name no one can read."""
    value = traits.get("timezone")
    if value is None or value == "":
        return traits
    return {**traits, "timezone": zone_check(value, field=f"{field}.timezone")}
