"""Fixed-window rate limits counted in one place for every process.

`rate_limit_hit` counts one hit of `key` in the current window and says whether it is
allowed. The count lives in Redis when `REDIS_URL` is configured (`SET NX EX` + `INCR` in one
MULTI), otherwise in the database: one atomic upsert per hit,
`INSERT ... ON CONFLICT (key, window_start) DO UPDATE SET hits = hits + 1 RETURNING hits`
(PostgreSQL and SQLite alike). Either way two gunicorn workers, or two machines, share one
count; the old in-process cache let each process admit the whole limit.

Call it outside a transaction (a DRF throttle, the top of a view): inside one, the counter
row stays locked until that transaction ends and serialises the key's requests.
If Redis is unreachable the database counts instead (a warning is logged), so a Redis
outage neither rejects every request nor switches the limit off.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from django.conf import settings
from django.db import connection

from journeys.models import RateCounter

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The answer for one hit: allowed or not, seconds until the window resets, hits left in it."""

    allowed: bool
    retry_after: int
    remaining: int


def _epoch(now: datetime | float | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        return now.timestamp()
    return float(now)


@lru_cache(maxsize=4)
def _redis_client(url: str):
    import redis

    return redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)


def _redis_count(url: str, key: str, window_start: int, window_s: int) -> int:
    name = f"ratelimit:{key}:{window_start}"
    pipe = _redis_client(url).pipeline(transaction=True)
    pipe.set(name, 0, ex=window_s + 1, nx=True)
    pipe.incr(name)
    return int(pipe.execute()[1])


def _db_count(key: str, window_start: int, window_end: int) -> int:
    table = connection.ops.quote_name(RateCounter._meta.db_table)
    with connection.cursor() as cur:
        cur.execute(
            f'INSERT INTO {table} ("key", "window_start", "window_end", "hits") VALUES (%s, %s, %s, 1)'
            f' ON CONFLICT ("key", "window_start") DO UPDATE SET "hits" = {table}."hits" + 1 RETURNING "hits"',
            [key, window_start, window_end],
        )
        hits = cur.fetchone()[0]
        if hits == 1:  # the key's first hit in a new window: its finished windows go (bounded per key)
            cur.execute(f'DELETE FROM {table} WHERE "key" = %s AND "window_end" <= %s', [key, window_start])
    return hits


def rate_limit_hit(*, key: str, limit: int, window_s: int, now: datetime | float | None = None) -> RateDecision:
    """Count one hit of `key` (e.g. `source:12`, `token:7`) in its fixed window of `window_s`
    seconds; allowed while the window holds at most `limit` hits. Hits past the limit are
    counted too (a client hammering a closed window keeps it closed until it resets)."""
    if limit < 1 or window_s < 1:
        raise ValueError("limit and window_s must be positive")
    if len(key) > 180:
        raise ValueError("key is longer than 180 characters")
    at = _epoch(now)
    window_start = int(at // window_s) * window_s
    window_end = window_start + window_s
    hits = None
    url = getattr(settings, "REDIS_URL", "")
    if url:
        try:
            hits = _redis_count(url, key, window_start, window_s)
        except Exception as exc:  # noqa: BLE001 - any Redis failure: count in the database instead
            logger.warning("rate limit: Redis unavailable (%s); counting %s in the database", exc, key)
    if hits is None:
        hits = _db_count(key, window_start, window_end)
    retry_after = max(1, int(window_end - at + 0.999))
    return RateDecision(allowed=hits <= limit, retry_after=retry_after if hits > limit else 0,
                        remaining=max(0, limit - hits))


def rate_counters_purge(*, now: datetime | float | None = None, batch: int = 5000) -> int:
    """Delete finished windows of keys that stopped sending (bounded; the scheduled cleanup calls it)."""
    at = int(_epoch(now))
    ids = list(RateCounter.objects.filter(window_end__lte=at).values_list("pk", flat=True)[:batch])
    if ids:
        RateCounter.objects.filter(pk__in=ids).delete()
    return len(ids)
