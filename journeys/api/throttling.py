"""Per-source request rate limit (fixed window in the shared cache)."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache

from journeys.models import Source


def source_rate_check(*, source: Source) -> int | None:
    """Count one request; returns seconds to wait when the source is over its limit."""
    window = settings.EVENT_API["RATE_LIMIT_WINDOW_S"]
    limit = source.rate_limit or settings.EVENT_API["RATE_LIMIT_REQUESTS"]
    if not limit:
        return None
    now = time.time()
    bucket = int(now // window)
    key = f"evrate:{source.pk}:{bucket}"
    if cache.add(key, 1, timeout=window + 1):
        count = 1
    else:
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=window + 1)
            count = 1
    if count > limit:
        return max(1, int((bucket + 1) * window - now) + 1)
    return None
