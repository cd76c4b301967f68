"""What the channels app tells the outbound event stream (journeys.services.stream): messages
sent, delivered, opened, clicked, bounced, failed and suppressed (with the reason).

Called where those things are recorded, inside the same transaction; for a batch of
deliveries with one call (one INSERT)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.utils import timezone

from channels_app.choices import DeliveryStatus
from channels_app.models import Delivery
from journeys.choices import StreamEventType
from journeys.services.stream import StreamItem, stream_active, stream_emit

STATUS_TYPES = {
    DeliveryStatus.SENT: StreamEventType.MESSAGE_SENT,
    DeliveryStatus.DELIVERED: StreamEventType.MESSAGE_DELIVERED,
    DeliveryStatus.OPENED: StreamEventType.MESSAGE_OPENED,
    DeliveryStatus.CLICKED: StreamEventType.MESSAGE_CLICKED,
    DeliveryStatus.BOUNCED: StreamEventType.MESSAGE_BOUNCED,
    DeliveryStatus.FAILED: StreamEventType.MESSAGE_FAILED,
    DeliveryStatus.SUPPRESSED: StreamEventType.MESSAGE_SUPPRESSED,
}


def _item(delivery: Delivery, event_type: str, at: datetime, key_suffix: str, extra: dict) -> StreamItem:
    channel = delivery.channel
    template = delivery.template if delivery.template_id else None
    customer = delivery.customer
    data = {
        "delivery_id": delivery.pk, "customer_id": delivery.customer_id, "user_id": customer.external_id or None,
        "channel": channel.name, "channel_kind": channel.kind, "template": template.name if template else None,
        "topic": delivery.topic.slug if delivery.topic_id else None, "transactional": delivery.transactional,
        "status": delivery.status, "reason": delivery.reason or None, "attempts": delivery.attempts,
        "run_id": delivery.run_id, "step": delivery.step_key or None, **extra,
    }
    if event_type in (StreamEventType.MESSAGE_SUPPRESSED, StreamEventType.MESSAGE_FAILED):
        data["reason_label"] = delivery.get_reason_display() or None
    key = f"{event_type}:{delivery.pk}{key_suffix}"
    return StreamItem(event_type, key, at, data, delivery.customer_id)


def deliveries_stream(*, deliveries: Iterable[Delivery], event_type: str | None = None, at: datetime | None = None,
                      key_suffix: str = "", extra: dict | None = None) -> int:
    """Record what happened to each delivery on the stream: `event_type`, or the one its status
    says (sent, suppressed...); statuses the stream does not carry (queued, deferred, sending)
    are skipped. One INSERT for all."""
    if not stream_active():
        return 0
    at = at or timezone.now()
    items = []
    for delivery in deliveries:
        kind = event_type or STATUS_TYPES.get(delivery.status)
        if kind is None:
            continue
        suffix = key_suffix or (f":{delivery.reason}" if kind == StreamEventType.MESSAGE_SUPPRESSED else "")
        items.append(_item(delivery, kind, at, suffix, extra or {}))
    return stream_emit(items=items) if items else 0
