"""IANA time zone names as clients send them: one rule for every door a zone comes in by.

A profile's zone decides when its local-time messages go out and when quiet hours apply.
Surrounding spaces and the letter case are forgiven (`" asia/kolkata"` is `Asia/Kolkata`);
offsets such as `+05:30` or `GMT+5` are not zones. Where a person types a zone (the traits
API, the admin form, a cron trigger's setting) a name the server cannot read is refused,
naming the field. An identify from the tracking API (or a quarantine replay) is kept: its
other traits apply, the unreadable zone stays a trait only, the customer keeps the zone they
had (never reset to UTC), and the event records why in its `violations` (`traits_zone_read`);
an import rejects such a row naming its row and column, as it does an unreadable phone.
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


def zone_problem(value: object) -> str:
    """Why `value` names no zone ("" when it does)."""
    if zone_canonical(value) is not None:
        return ""
    shown = repr(value[:40]) if isinstance(value, str) else f"a {type(value).__name__}"
    return (f"{shown} is not an IANA time zone; give a name such as Europe/Paris or America/New_York "
            "(offsets like +05:30 are not zones)")


def zone_check(value: object, *, field: str) -> str:
    """A zone a client sent, in its canonical spelling; EventValidationError naming `field` otherwise."""
    zone = zone_canonical(value)
    if zone is None:
        raise EventValidationError(zone_problem(value), field=field)
    return zone


def traits_zone_checked(traits: dict, *, field: str = "traits", stored: dict | None = None) -> dict:
    """Identify traits with their `timezone` (the profile's zone) checked and spelled canonically;
    null or empty is left as sent (it sets no zone), and so is the `timezone` trait already
    `stored` (the tracking API keeps an unreadable one as a trait: a save that does not change it
    is not refused for it). Raises EventValidationError naming `<field>.timezone` for a name no
    one can read."""
    value = traits.get("timezone")
    if value is None or value == "" or (stored is not None and value == stored.get("timezone")):
        return traits
    return {**traits, "timezone": zone_check(value, field=f"{field}.timezone")}


def traits_zone_read(traits: dict, *, field: str = "traits") -> tuple[dict, list[tuple[str, str]]]:
    """An identify's traits as the tracking API keeps them: a readable `timezone` in its canonical
    spelling, and the (field, why) of one no one can read, which is left as sent (a trait only:
    the profile's zone is not changed by it, see `customer_apply_traits`)."""
    value = traits.get("timezone")
    if value is None or value == "":
        return traits, []
    zone = zone_canonical(value)
    if zone is None:
        return traits, [(f"{field}.timezone", zone_problem(value))]
    return {**traits, "timezone": zone}, []
