"""What a step sees while it runs: the rule context, the run, the clock, dry-run or not."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from journeys.rules import RuleContext, RuleResult, compile_rule


def customer_zone(customer: Any) -> ZoneInfo:
    """The customer's timezone; an unknown name falls back to UTC rather than failing a run."""
    try:
        return ZoneInfo(getattr(customer, "timezone", "") or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def profile_dict(customer: Any, now: datetime) -> dict:
    """profile.* for rules: traits plus computed attributes (tenure_days, days_since_last_seen...)."""
    traits = dict(customer.traits or {})
    first_seen = customer.first_seen or getattr(customer, "created_at", None)
    profile = {
        **traits,
        "user_id": customer.external_id,
        "email": customer.email or traits.get("email"),
        "phone": customer.phone or traits.get("phone"),
        "timezone": customer.timezone,
        "locale": customer.locale,
        "first_seen": first_seen,
        "last_seen": customer.last_seen,
        "last_engaged_at": customer.last_engaged_at,
        "tenure_days": (now - first_seen).days if first_seen else None,
        "days_since_last_seen": (now - customer.last_seen).days if customer.last_seen else None,
    }
    profile.setdefault("ltv", traits.get("ltv", traits.get("lifetime_value", 0)))
    return profile


def event_dict(event: Any) -> dict:
    """event.* for rules: what the client sent (ids, names, timestamps, channel, category...) and
    `event.other.<field>` for any other top-level field it sent."""
    if event is None:
        return {}
    if isinstance(event, dict):
        return event
    return {
        "name": event.name,
        "type": event.type,
        "properties": event.properties or {},
        "traits": event.traits or {},
        "timestamp": event.timestamp,
        "message_id": event.message_id,
        "id": event.pk,
        "user_id": getattr(event, "user_id", ""),
        "anonymous_id": getattr(event, "anonymous_id", ""),
        "previous_id": getattr(event, "previous_id", ""),
        "group_id": getattr(event, "group_id", ""),
        "category": getattr(event, "category", ""),
        "channel": getattr(event, "channel", ""),
        "version": getattr(event, "version", ""),
        "original_timestamp": getattr(event, "original_timestamp", None),
        "sent_at": getattr(event, "sent_at", None),
        "received_at": getattr(event, "received_at", None),
        "ip": getattr(event, "ip", None),
        "metadata": getattr(event, "metadata", None) or {},
        "other": getattr(event, "other", None) or {},
    }


def context_dict(event: Any, now: datetime) -> dict:
    raw = (event.get("context") if isinstance(event, dict) else getattr(event, "context", None)) or {}
    device = raw.get("device")
    return {
        **raw,
        "device": device.get("type") if isinstance(device, dict) else device,
        "device_info": device if isinstance(device, dict) else {},
        "channel": raw.get("channel"),
        "location": raw.get("location") or {},
        "now": now,
    }


@dataclass
class StepContext:
    """Passed to StepKind.execute. `run` is a JourneyRun, or a SimRun in dry runs."""

    run: Any
    customer: Any
    event: Any
    step_key: str
    step_name: str
    config: dict
    visit: int
    now: datetime
    dry_run: bool
    workflow_id: int
    version_id: int
    profile: dict
    events_in_last: Any = None
    notes: dict = field(default_factory=dict)
    # When, in the customer's own time, the run came to this step: the time of the event it is moving
    # on (the event that started it, or the awaited event that ended its last wait); None: `now` (a
    # timer woke it, a time-driven entry started it).
    since: datetime | None = None

    @property
    def idempotency_key(self) -> str:
        """Stable across retries of the same visit: use it for every external action."""
        return f"run:{self.run.pk}:{self.step_key}:{self.visit}"

    def rule_context(self) -> RuleContext:
        return RuleContext(
            event=event_dict(self.event),
            profile=self.profile,
            context=context_dict(self.event, self.now),
            journey=self.run.variables,
            now=self.now,
            events_in_last=self.events_in_last,
        )

    def evaluate(self, text: str) -> RuleResult:
        result = compile_rule(text).evaluate(self.rule_context())
        if result.error:
            self.notes.setdefault("rule_errors", []).append(f"{text}: {result.error}")
        return result

    def zone(self) -> ZoneInfo:
        return customer_zone(self.customer)

    def local_now(self) -> datetime:
        return self.now.astimezone(self.zone())


def events_counter(customer_id: int | None):
    """events_in_last(name, since) for rules: counts the customer's stored events."""

    def count(name: str, since: datetime) -> int:
        from journeys.models import Event

        if customer_id is None:
            return 0
        return Event.objects.filter(customer_id=customer_id, name=name, timestamp__gte=since).count()

    return count


DAY_SECONDS = 86400
_UTC = ZoneInfo("UTC")


def add_wait(now: datetime, zone: ZoneInfo, *, seconds: int) -> datetime:
    """`seconds` after `now`, with every whole 24 hours of it counted as a day on the customer's
    calendar, whatever unit the wait was written in (1d, 1w; also 24h, 36h's first day, 48h: only
    seconds are stored): a day later is the same wall-clock time the next day, across a DST
    change too; the rest under a day is elapsed time (README, "Waits in days or weeks"). A wall time
    the change skips or repeats is read as a date trigger reads it (fold 0: 02:30 on
    spring-forward day is 03:30, a repeated time its first occurrence)."""
    days, rest = divmod(int(seconds), DAY_SECONDS)
    if days:
        wall = now.astimezone(zone).replace(tzinfo=None, fold=0) + timedelta(days=days)
        now = wall.replace(tzinfo=zone).astimezone(_UTC)
    return now + timedelta(seconds=rest)


def add_local(now: datetime, zone: ZoneInfo, *, at: str) -> datetime:
    """The next moment after `now` when the customer's clock shows `at` (HH:MM)."""
    hour, minute = (int(p) for p in at.split(":"))
    local = now.astimezone(zone)
    target = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target <= local:
        target = (local + timedelta(days=1)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return target
