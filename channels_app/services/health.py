"""Channel health for the admin: breaker state, errors (and what the last one said) and p95
latency over the last hour.

Read fresh on every page (no cache: a cached figure hid an outage), from the attempt log's
`at` index: one aggregate, the newest failed attempt and, for the p95, one ordered read of that
hour's latencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Max, Q
from django.utils import timezone

from channels_app.choices import BreakerState
from channels_app.models import Channel, ChannelBreaker, DeliveryAttempt
from journeys.services.oplog import text_scrubbed

WINDOW = timedelta(hours=1)


@dataclass
class Health:
    state: str
    attempts: int
    error_rate: float | None
    p95_ms: int | None
    errors: int = 0
    last_error_at: datetime | None = None
    last_error: str = ""  # what the last one said (its status code first), addresses and numbers taken out
    opened_at: datetime | None = None  # when the breaker last opened (kept after it closed again)

    @property
    def errors_text(self) -> str:
        """"15 of 18,992 (0.08%)": a handful of errors among many attempts is not "0%"."""
        if self.error_rate is None:
            return "-"
        rate = self.error_rate
        shown = f"{rate:.0%}" if rate == 0 or rate >= 0.01 else f"{rate:.2%}" if rate >= 0.0001 else "< 0.01%"
        return f"{self.errors} of {self.attempts:,} ({shown})"

    @property
    def p95_text(self) -> str:
        return "-" if self.p95_ms is None else f"{self.p95_ms} ms"

    @property
    def summary(self) -> str:
        """One line for the channel page, every figure from the same reading."""
        text = f"circuit {self.state}"
        if self.opened_at:
            text += f" (last opened {timezone.localtime(self.opened_at):%Y-%m-%d %H:%M:%S})"
        text += f"; {self.attempts:,} attempts; errors {self.errors_text}"
        if self.last_error_at:
            text += f", last at {timezone.localtime(self.last_error_at):%H:%M:%S}"
            if self.last_error:
                text += f" ({self.last_error})"
        return f"{text}; p95 {self.p95_text}"


def _rank(n: int, pct: float) -> int:
    return max(1, int(-(-pct * n // 100)))  # ceil


def channel_health(*, channel: Channel, now: datetime | None = None) -> Health:
    """The channel's breaker and its last hour of provider calls, as they are now."""
    now = now or timezone.now()
    breaker = ChannelBreaker.objects.filter(channel=channel).first()
    hour = DeliveryAttempt.objects.filter(channel=channel, at__gte=now - WINDOW)
    counts = hour.aggregate(attempts=Count("id"), errors=Count("id", filter=Q(ok=False)),
                            timed=Count("id", filter=Q(ok=True, latency_ms__isnull=False)),
                            last_error_at=Max("at", filter=Q(ok=False)))
    p95 = None
    if counts["timed"]:  # the nearest-rank value, read by the database from the ordered latencies
        p95 = (hour.filter(ok=True, latency_ms__isnull=False).order_by("latency_ms")
               .values_list("latency_ms", flat=True)[_rank(counts["timed"], 95) - 1])
    attempts = counts["attempts"]
    last_error = ""
    if counts["errors"]:  # the newest failed attempt (the `at` index, read backwards)
        last = hour.filter(ok=False).order_by("-at", "-id").values("status_code", "error").first()
        if last:
            text = text_scrubbed(last["error"], limit=300)
            code = str(last["status_code"] or "")
            last_error = text if not code or code in text else f"{code}: {text}"
    return Health(
        state=breaker.state if breaker else BreakerState.CLOSED,
        attempts=attempts,
        error_rate=(counts["errors"] / attempts) if attempts else None,
        p95_ms=p95,
        errors=counts["errors"],
        last_error_at=counts["last_error_at"],
        last_error=last_error,
        opened_at=breaker.opened_at if breaker else None,
    )
