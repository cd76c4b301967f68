"""Channel health for the admin: breaker state, error rate and p95 latency over the last hour."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from channels_app.choices import BreakerState
from channels_app.models import Channel, ChannelBreaker, DeliveryAttempt


@dataclass
class Health:
    state: str
    attempts: int
    error_rate: float | None
    p95_ms: int | None


def percentile(values: list[int], pct: float) -> int | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(-(-pct * len(ordered) // 100)))  # ceil
    return ordered[rank - 1]


def channel_health(*, channel: Channel, now: datetime | None = None) -> Health:
    now = now or timezone.now()
    breaker = ChannelBreaker.objects.filter(channel=channel).first()
    rows = list(DeliveryAttempt.objects.filter(channel=channel, at__gte=now - timedelta(hours=1))
                .values_list("ok", "latency_ms"))
    errors = sum(1 for ok, _ in rows if not ok)
    return Health(
        state=breaker.state if breaker else BreakerState.CLOSED,
        attempts=len(rows),
        error_rate=(errors / len(rows)) if rows else None,
        p95_ms=percentile([ms for ok, ms in rows if ok and ms is not None], 95),
    )
