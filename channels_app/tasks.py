"""django-q2 tasks: thin wrappers that take ids and call services."""

from __future__ import annotations

from datetime import datetime

from channels_app.services import dispatch
from journeys.tasks import worker_gc_tune


def delivery_send(delivery_id: int, now: str | None = None) -> str:
    delivery = dispatch.delivery_dispatch(delivery_id=delivery_id, now=datetime.fromisoformat(now) if now else None)
    return delivery.status if delivery else "missing"


def deliveries_send(delivery_ids: list[int]) -> dict:
    """The queued deliveries of one engine batch, claimed and sent in batches."""
    worker_gc_tune()
    return dispatch.deliveries_dispatch(delivery_ids=delivery_ids)


def deliveries_drain(now: str | None = None) -> dict:
    """Due deliveries (quiet hours over, retries, pauses lifted), batch after batch, for a bounded time."""
    worker_gc_tune()
    return dispatch.deliveries_drain(now=datetime.fromisoformat(now) if now else None)


def deliveries_tick() -> int:
    """Every minute: expired send leases, then drain tasks for what is due."""
    return dispatch.deliveries_dispatch_due()
