"""The circuit breaker of a channel, stored in ChannelBreaker rows so all workers share it.

closed --N consecutive transient failures--> open --cooldown--> half_open (one probe)
half_open --probe succeeds--> closed;  half_open --probe fails--> open again.

It also opens on time lost: consecutive failures whose durations add up to
DELIVERY_BREAKER_FAILING_S (default 30 s; 0: count only), so a vendor that hangs each request
to the timeout opens it after a few timeouts, not `breaker_threshold` of them one after another.
When the vendor's last failed answer carried Retry-After, the half-open probe waits for it too.

Every change of state is logged once it is committed (WARNING when it opens or closes, INFO for a
probe), with the channel and its last error (code and text, without addresses or numbers); the
failed attempts of a channel are logged in aggregate, at most a line a minute per channel and
process (journeys.services.oplog). The lines an on-call alerts on: docs/SCALING.md, "On call".
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from channels_app.choices import BreakerState
from channels_app.models import Channel, ChannelBreaker
from journeys.services.oplog import counts_text, error_code, ops_warning, text_scrubbed

logger = logging.getLogger(__name__)


def _named(channel: Channel) -> str:
    return f"channel {channel.name!r} ({channel.kind}, {channel.provider})"


def _last_error(error: str) -> str:
    """A provider's error as logged: its code first, then its text without addresses or numbers."""
    if not error:
        return "none recorded"
    code, text = error_code(error), text_scrubbed(error)
    return text if text.startswith(code) else f"{code}: {text}"


def _log_on_commit(level: int, message: str) -> None:
    transaction.on_commit(lambda: logger.log(level, message))


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
    failing_ms: int = 0  # how long those failures took, together


class Outcome(NamedTuple):
    """One send, as the breaker counts it: how long it took, and when the vendor said to come back."""

    ok: bool
    error: str = ""
    latency_ms: int = 0
    retry_at: datetime | None = None  # the failed answer's Retry-After, as a moment


def failing_budget_ms() -> int:
    """Consecutive failures that took this long together open the breaker (0: never by time)."""
    return int(float(getattr(settings, "DELIVERY_BREAKER_FAILING_S", 30)) * 1000)


def breaker_opens(*, channel: Channel, failures: int, failing_ms: int) -> bool:
    """Whether this many consecutive failures, taking this long together, open a closed breaker."""
    budget = failing_budget_ms()
    return failures >= channel.breaker_threshold or bool(budget and failures and failing_ms >= budget)


def breaker_admit(*, channel: Channel, now: datetime) -> Admission:
    """May sends go to this channel now? After the cooldown exactly one caller becomes the
    half-open probe (and should send one message before asking again)."""
    row = (ChannelBreaker.objects.filter(channel=channel)
           .values_list("state", "consecutive_failures", "failing_ms").first())
    if row is None or row[0] == BreakerState.CLOSED:  # the common case: one read, no lock, no write
        return Admission(True, failures=row[1] if row else 0, failing_ms=row[2] if row else 0)
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
        return Admission(True, failures=breaker.consecutive_failures, failing_ms=breaker.failing_ms)
    if breaker.state == BreakerState.OPEN:
        reopen = (breaker.opened_at or now) + cooldown
        if breaker.retry_after_until and breaker.retry_after_until > reopen:
            reopen = breaker.retry_after_until  # the vendor asked for more time than the cooldown
        if now < reopen:
            return Admission(False, retry_at=reopen)
        breaker.state, breaker.probe_started_at = BreakerState.HALF_OPEN, now
        breaker.save(update_fields=["state", "probe_started_at", "updated_at"])
        _log_on_commit(logging.INFO, f"breaker of {_named(channel)} half-open after its {channel.breaker_cooldown_s} s "
                                     "cooldown: one probe message is sent")
        return Admission(True, probe=True)
    # half-open: a probe is in flight; a stale probe (its worker died) is replaced
    if breaker.probe_started_at and now - breaker.probe_started_at < cooldown:
        return Admission(False, retry_at=breaker.probe_started_at + cooldown)
    breaker.probe_started_at = now
    breaker.save(update_fields=["probe_started_at", "updated_at"])
    return Admission(True, probe=True)


def breaker_record(*, channel: Channel, ok: bool, now: datetime, error: str = "", latency_ms: int = 0,
                   retry_at: datetime | None = None) -> ChannelBreaker:
    """Count a success (closes the breaker) or a transient failure (may open it)."""
    return breaker_record_many(channel=channel, outcomes=[Outcome(ok, error, latency_ms, retry_at)], now=now)


def breaker_record_many(*, channel: Channel, outcomes: Sequence[tuple], now: datetime) -> ChannelBreaker:
    """Count the successes and transient failures of a batch, in the order they happened
    (`Outcome`s, or (ok, error) pairs), with one locked update (as many breaker_record calls would)."""
    outcomes = [Outcome(*o) for o in outcomes]
    if not outcomes or (all(o.ok for o in outcomes) and not ChannelBreaker.objects.filter(channel=channel).exclude(
            state=BreakerState.CLOSED, consecutive_failures=0).exists()):
        return ChannelBreaker(channel=channel)  # already closed and clean (or never failed): nothing to write
    return _record_locked(channel, outcomes, now)


@transaction.atomic
def _record_locked(channel: Channel, outcomes: Sequence[Outcome], now: datetime) -> ChannelBreaker:
    breaker = _locked(channel)
    was, opened_at, failed = breaker.state, breaker.opened_at, Counter()
    for ok, error, latency_ms, retry_at in outcomes:
        if ok:
            breaker.state, breaker.consecutive_failures, breaker.probe_started_at = BreakerState.CLOSED, 0, None
            breaker.failing_ms, breaker.retry_after_until = 0, None
            continue
        failed[error_code(error)] += 1
        breaker.consecutive_failures += 1
        breaker.failing_ms += max(0, latency_ms)
        breaker.last_error = error[:2000]
        if retry_at is not None:
            breaker.retry_after_until = retry_at
        if breaker.state == BreakerState.HALF_OPEN or breaker_opens(
                channel=channel, failures=breaker.consecutive_failures, failing_ms=breaker.failing_ms):
            if breaker.state != BreakerState.OPEN:
                probe = breaker.state == BreakerState.HALF_OPEN
                _log_on_commit(logging.WARNING, _opened_text(channel, breaker, probe=probe))
            breaker.state, breaker.opened_at, breaker.probe_started_at = BreakerState.OPEN, now, None
    breaker.save()
    if was != BreakerState.CLOSED and breaker.state == BreakerState.CLOSED:
        since = f" (open since {timezone.localtime(opened_at):%Y-%m-%d %H:%M:%S})" if opened_at else ""
        _log_on_commit(logging.WARNING, f"breaker of {_named(channel)} closed: the provider answers again{since}")
    if failed:
        last = breaker.last_error
        transaction.on_commit(lambda: _failures_logged(channel, failed, last))
    return breaker


def _opened_text(channel: Channel, breaker: ChannelBreaker, *, probe: bool) -> str:
    failures = breaker.consecutive_failures
    if probe:
        why = "its half-open probe failed"
    elif failures >= channel.breaker_threshold:
        why = f"{failures} consecutive failures (threshold {channel.breaker_threshold})"
    else:  # opened on the time lost
        why = (f"{failures} consecutive failures taking {breaker.failing_ms / 1000:.1f} s"
               f" (DELIVERY_BREAKER_FAILING_S {failing_budget_ms() / 1000:g} s)")
    return (f"breaker of {_named(channel)} open after {why}; last error {_last_error(breaker.last_error)}; "
            f"its messages wait (or go to its fallback channel) and a probe is sent in {channel.breaker_cooldown_s} s")


def _failures_logged(channel: Channel, failed: Counter, last_error: str) -> None:
    """The channel's failed provider attempts, at most one WARNING a minute per channel and process."""
    def render(counts: Counter, seconds: float | None) -> str:
        window = f" in the last {seconds:.0f} s" if seconds is not None else ""
        return (f"provider errors on {_named(channel)}: {sum(counts.values())} failed attempt(s){window} "
                f"({counts_text(counts)}); last error {_last_error(last_error)}")

    ops_warning(logger, key=f"attempts:{channel.pk}", counts=failed, render=render)


@transaction.atomic
def breaker_reset(*, channel: Channel) -> None:
    """Admin action: close the breaker by hand (e.g. after fixing the provider)."""
    was = ChannelBreaker.objects.select_for_update().filter(channel=channel).values_list("state", flat=True).first()
    ChannelBreaker.objects.filter(channel=channel).update(
        state=BreakerState.CLOSED, consecutive_failures=0, failing_ms=0, opened_at=None, probe_started_at=None,
        retry_after_until=None)
    if was not in (None, BreakerState.CLOSED):
        _log_on_commit(logging.WARNING, f"breaker of {_named(channel)} closed by hand")
