"""The circuit breaker of a channel, stored in ChannelBreaker rows so all workers share it.

closed --N consecutive transient failures--> open --cooldown--> half_open (one probe)
half_open --probe succeeds--> closed;  half_open --probe fails--> open again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction

from channels_app.choices import BreakerState
from channels_app.models import Channel, ChannelBreaker


def _locked(channel: Channel) -> ChannelBreaker:
    ChannelBreaker.objects.get_or_create(channel=channel)
    return ChannelBreaker.objects.select_for_update().get(channel=channel)


@dataclass
class Admission:
    """What the breaker says to a dispatcher about to send on a channel."""

    allowed: bool
    probe: bool = False  # half-open: this caller's one message is the probe; look again after it
    retry_at: datetime | None = None  # when not allowed: when to look again
    failures: int = 0  # consecutive transient failures so far (a closed breaker opens at the threshold)


def breaker_admit(*, channel: Channel, now: datetime) -> Admission:
    """May sends go to this channel now? After the cooldown exactly one caller becomes the
    half-open probe (and should send one message before asking again)."""
    row = ChannelBreaker.objects.filter(channel=channel).values_list("state", "consecutive_failures").first()
    if row is None or row[0] == BreakerState.CLOSED:
        return Admission(True, failures=row[1] if row else 0)  # the common case: one read, no lock, no write
    return _admit_locked(channel, now)


def breaker_allow(*, channel: Channel, now: datetime) -> tuple[bool, datetime | None]:
    """breaker_admit for one send: (allowed, when to look again)."""
    admission = breaker_admit(channel=channel, now=now)
    return admission.allowed, admission.retry_at


@transaction.atomic
def _admit_locked(channel: Channel, now: datetime) -> Admission:
    breaker = _locked(channel)
    cooldown = timedelta(seconds=channel.breaker_cooldown_s)
    if breaker.state == BreakerState.CLOSED:
        return Admission(True, failures=breaker.consecutive_failures)
    if breaker.state == BreakerState.OPEN:
        reopen = (breaker.opened_at or now) + cooldown
        if now < reopen:
            return Admission(False, retry_at=reopen)
        breaker.state, breaker.probe_started_at = BreakerState.HALF_OPEN, now
        breaker.save(update_fields=["state", "probe_started_at", "updated_at"])
        return Admission(True, probe=True)
    # half-open: a probe is in flight; a stale probe (its worker died) is replaced
    if breaker.probe_started_at and now - breaker.probe_started_at < cooldown:
        return Admission(False, retry_at=breaker.probe_started_at + cooldown)
    breaker.probe_started_at = now
    breaker.save(update_fields=["probe_started_at", "updated_at"])
    return Admission(True, probe=True)


def breaker_record(*, channel: Channel, ok: bool, now: datetime, error: str = "") -> ChannelBreaker:
    """Count a success (closes the breaker) or a transient failure (may open it)."""
    return breaker_record_many(channel=channel, outcomes=[(ok, error)], now=now)


def breaker_record_many(*, channel: Channel, outcomes: Sequence[tuple[bool, str]], now: datetime) -> ChannelBreaker:
    """Count the successes and transient failures of a batch, in the order they happened,
    with one locked update (as many breaker_record calls would)."""
    if not outcomes or (all(ok for ok, _ in outcomes) and not ChannelBreaker.objects.filter(channel=channel).exclude(
            state=BreakerState.CLOSED, consecutive_failures=0).exists()):
        return ChannelBreaker(channel=channel)  # already closed and clean (or never failed): nothing to write
    return _record_locked(channel, outcomes, now)


@transaction.atomic
def _record_locked(channel: Channel, outcomes: Sequence[tuple[bool, str]], now: datetime) -> ChannelBreaker:
    breaker = _locked(channel)
    for ok, error in outcomes:
        if ok:
            breaker.state, breaker.consecutive_failures, breaker.probe_started_at = BreakerState.CLOSED, 0, None
            continue
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
