"""What a rule is evaluated against (`RuleContext`).

On its own, below both the compiler and the rule functions (which read the clock and the
event counter from it), so that neither imports the other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

EventCounter = Callable[[str, dt.datetime], "int | None"]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _as_dict(value: object, name: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if type(value) is dict:
        return value
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"RuleContext.{name} must be a dict, not {type(value).__name__}")


@dataclass(slots=True)
class RuleContext:
    """What a rule can see: the four roots, the clock, and a way to count past events.

    Roots are normalised to plain dicts here, once, so generated code can index
    them without checking.
    """

    event: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    journey: dict[str, Any] = field(default_factory=dict)
    now: dt.datetime = field(default_factory=_utcnow)
    events_in_last: EventCounter | None = None

    def __post_init__(self) -> None:
        self.event = _as_dict(self.event, "event")
        self.profile = _as_dict(self.profile, "profile")
        self.context = _as_dict(self.context, "context")
        self.journey = _as_dict(self.journey, "journey")
        if self.now is None:
            self.now = _utcnow()
        elif self.now.tzinfo is None or self.now.utcoffset() is None:
            raise ValueError("RuleContext.now must be timezone-aware")
