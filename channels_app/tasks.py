"""django-q2 tasks: thin wrappers that take ids and call services."""

from __future__ import annotations

from datetime import datetime

from channels_app.services import dispatch


def delivery_send(delivery_id: int, now: str | None = None) -> str:
    delivery = dispatch.delivery_dispatch(delivery_id=delivery_id, now=datetime.fromisoformat(now) if now else None)
    return delivery.status if delivery else "missing"


def deliveries_tick() -> int:
    """Every minute: deferred sends that are due, lost enqueues, expired send leases."""
    return dispatch.deliveries_dispatch_due()
