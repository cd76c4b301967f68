"""Channel health for the admin: breaker state, errors (and, on a channel's page, what the last
one said) and p95 latency over the last hour.

Read fresh on every page (no cache: a cached figure hid an outage), from the attempt log's
`at` index: for any number of channels, one read of the breakers, one aggregate grouped by
channel and, for the p95s, one ranked read of that hour's latencies; a channel's own page also
reads its newest failed attempt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, F, Max, Q, Window
from django.db.models.functions import RowNumber
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


def channels_health(*, channels: Iterable[Channel], now: datetime | None = None) -> dict[int, Health]:
    """The health of each of `channels` (id -> Health), read together: the breakers in one query,
    the hour's counts grouped by channel in one, each channel's p95 in one (its nearest-rank
    latency, picked by a window over the hour's timed attempts), however many channels there
    are: a list page of 100 channels costs three queries, not two hundred."""
    now = now or timezone.now()
    ids = [c.pk for c in channels]
    if not ids:
        return {}
    breakers = {b.channel_id: b for b in ChannelBreaker.objects.filter(channel_id__in=ids)}
    hour = DeliveryAttempt.objects.filter(channel_id__in=ids, at__gte=now - WINDOW)
    counts = {row["channel_id"]: row for row in hour.values("channel_id").order_by().annotate(
        attempts=Count("id"), errors=Count("id", filter=Q(ok=False)),
        timed=Count("id", filter=Q(ok=True, latency_ms__isnull=False)),
        last_error_at=Max("at", filter=Q(ok=False)))}
    p95: dict[int, int] = {}
    if any(row["timed"] for row in counts.values()):
        ranked = (hour.filter(ok=True, latency_ms__isnull=False).order_by()
                  .annotate(position=Window(RowNumber(), partition_by=[F("channel_id")],
                                            order_by=[F("latency_ms").asc(), F("id").asc()]),
                            timed=Window(Count("id"), partition_by=[F("channel_id")]))
                  .filter(position=(F("timed") * 95 + 99) / 100)  # ceil(95% of n): the nearest rank
                  .values_list("channel_id", "latency_ms"))
        p95 = dict(ranked)
    healths = {}
    for pk in ids:
        row, breaker = counts.get(pk), breakers.get(pk)
        attempts = row["attempts"] if row else 0
        healths[pk] = Health(
            state=breaker.state if breaker else BreakerState.CLOSED,
            attempts=attempts,
            error_rate=(row["errors"] / attempts) if attempts else None,
            p95_ms=p95.get(pk),
            errors=row["errors"] if row else 0,
            last_error_at=row["last_error_at"] if row else None,
            opened_at=breaker.opened_at if breaker else None,
        )
    return healths


def channel_health(*, channel: Channel, now: datetime | None = None) -> Health:
    """The channel's breaker and its last hour of provider calls, as they are now, with what its
    newest failed attempt said (the `at` index, read backwards)."""
    now = now or timezone.now()
    health = channels_health(channels=[channel], now=now)[channel.pk]
    if health.errors:
        last = (DeliveryAttempt.objects.filter(channel=channel, at__gte=now - WINDOW, ok=False)
                .order_by("-at", "-id").values("status_code", "error").first())
        if last:
            text = text_scrubbed(last["error"], limit=300)
            code = str(last["status_code"] or "")
            health.last_error = text if not code or code in text else f"{code}: {text}"
    return health
