"""Per-source request rate limit of the tracking API (shared by every process: see services.ratelimit)."""

from __future__ import annotations

from django.conf import settings

from journeys.models import Source
from journeys.services.ratelimit import rate_limit_hit


def source_rate_check(*, source: Source) -> int | None:
    """Count one request; returns seconds to wait when the source is over its limit."""
    limit = source.rate_limit or settings.EVENT_API["RATE_LIMIT_REQUESTS"]
    if not limit:
        return None
    decision = rate_limit_hit(key=f"source:{source.pk}", limit=limit, window_s=settings.EVENT_API["RATE_LIMIT_WINDOW_S"])
    return None if decision.allowed else decision.retry_after
