"""The circuit breaker of a channel, stored in ChannelBreaker rows so all workers share it.

closed --N consecutive transient failures--> open --cooldown--> half_open (one probe)
half_open --probe succeeds--> closed;  half_open --probe fails--> open again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction

from channels_app.choices import BreakerState
from channels_app.models import Channel, ChannelBreaker


def _locked(channel: Channel) -> ChannelBreaker:
    ChannelBreaker.objects.get_or_create(channel=channel)
    return ChannelBreaker.objects.select_for_update().get(channel=channel)


def breaker_allow(*, channel: Channel, now: datetime) -> tuple[bool, datetime | None]:
    """May a send go to this channel now? When not, also says when to look again.
    After the cooldown exactly one caller becomes the half-open probe."""
    state = ChannelBreaker.objects.filter(channel=channel).values_list("state", flat=True).first()
    if state is None or state == BreakerState.CLOSED:
        return True, None  # the common case: one read, no lock, no write, no savepoint
    return _allow_locked(channel, now)


@transaction.atomic
def _allow_locked(channel: Channel, now: datetime) -> tuple[bool, datetime | None]:
    breaker = _locked(channel)
    cooldown = timedelta(seconds=channel.breaker_cooldown_s)
    if breaker.state == BreakerState.CLOSED:
        return True, None
    if breaker.state == BreakerState.OPEN:
        reopen = (breaker.opened_at or now) + cooldown
        if now < reopen:
            return False, reopen
        breaker.state, breaker.probe_started_at = BreakerState.HALF_OPEN, now
        breaker.save(update_fields=["state", "probe_started_at", "updated_at"])
        return True, None
    # half-open: a probe is in flight; a stale probe (its worker died) is replaced
    if breaker.probe_started_at and now - breaker.probe_started_at < cooldown:
        return False, breaker.probe_started_at + cooldown
    breaker.probe_started_at = now
    breaker.save(update_fields=["probe_started_at", "updated_at"])
    return True, None


def breaker_record(*, channel: Channel, ok: bool, now: datetime, error: str = "") -> ChannelBreaker:
    """Count a success (closes the breaker) or a transient failure (may open it)."""
    if ok and not ChannelBreaker.objects.filter(channel=channel).exclude(
            state=BreakerState.CLOSED, consecutive_failures=0).exists():
        return ChannelBreaker(channel=channel)  # already closed and clean (or never failed): nothing to write
    return _record_locked(channel, ok, now, error)


@transaction.atomic
def _record_locked(channel: Channel, ok: bool, now: datetime, error: str) -> ChannelBreaker:
    breaker = _locked(channel)
    if ok:
        breaker.state, breaker.consecutive_failures, breaker.probe_started_at = BreakerState.CLOSED, 0, None
    else:
        breaker.consecutive_failures += 1
        breaker.last_error = error[:2000]
        if breaker.state == BreakerState.HALF_OPEN or breaker.consecutive_failures >= channel.breaker_threshold:
            breaker.state, breaker.opened_at, breaker.probe_started_at = BreakerState.OPEN, now, None
    breaker.save()
    return breaker


@transaction.atomic
def breaker_reset(*, channel: Channel) -> None:
    """Admin action: close the breaker by hand (e.g. after fixing the provider)."""
    ChannelBreaker.objects.filter(channel=channel).update(
        state=BreakerState.CLOSED, consecutive_failures=0, opened_at=None, probe_started_at=None)
