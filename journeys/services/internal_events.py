"""Events the product records itself (profile updates, case resolved, email opened...)."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from journeys.choices import EventType
from journeys.models import Customer, Event, EventKey, Source
from journeys.models.events import hash_write_key

INTERNAL_SOURCE = "internal"


def internal_source() -> Source:
    """The source for product-made events; it has no usable write key (HTTP cannot post as it)."""
    source = Source.objects.filter(name=INTERNAL_SOURCE).first()
    if source is None:
        source, _ = Source.objects.get_or_create(
            name=INTERNAL_SOURCE,
            defaults={
                "description": "events recorded by the console itself",
                "enabled": False,
                "key_hash": hash_write_key(uuid.uuid4().hex + uuid.uuid4().hex),
                "key_prefix": "internal",
            },
        )
    return source


@transaction.atomic
def event_record_internal(
    *,
    customer: Customer,
    name: str,
    properties: dict | None = None,
    traits: dict | None = None,
    changes: dict | None = None,
    at: datetime | None = None,
    message_id: str | None = None,
    context: dict | None = None,
) -> Event:
    """Store an internal event in the outbox so journeys can react to it like any other.

    `message_id` makes it idempotent (e.g. one `Email Opened` per delivery).
    """
    from journeys.engine.queue import enqueue_events

    from journeys.services.bulk_ingest import events_insert

    at = at or timezone.now()
    source = internal_source()
    mid = message_id or f"int-{uuid.uuid4()}"
    ids = events_insert([{
        "source_id": source.pk, "message_id": mid, "type": EventType.IDENTIFY if traits else EventType.TRACK,
        "name": name, "user_id": customer.external_id, "customer_id": customer.pk, "properties": properties or {},
        "traits": traits or {}, "changes": changes or {}, "context": context or {}, "timestamp": at,
        "received_at": timezone.now(),
    }])
    if not ids:  # recorded before (its key is kept as long as the event)
        key = EventKey.objects.get(source=source, message_id=mid)
        existing = Event.objects.filter(pk=key.event_id).first()
        if existing is not None:
            return existing
        key.delete()  # the event itself is gone (retention): record it again
        return event_record_internal(customer=customer, name=name, properties=properties, traits=traits,
                                     changes=changes, at=at, message_id=mid, context=context)
    enqueue_events(ids)
    return Event.objects.get(pk=ids[0])


def events_record_internal(*, rows: list[dict], at: datetime) -> list[int]:
    """Store many internal events with one INSERT and queue them one task per batch.

    Each row: customer_id, user_id, name, properties, message_id (derived from what happened,
    e.g. a transition id, so it is new: repeats are the caller's to avoid). Call it inside the
    transaction that made the change: the rows are the outbox. Returns the new ids in order.
    """
    from journeys.engine.batch import rows_insert
    from journeys.engine.queue import enqueue_events

    if not rows:
        return []
    source_id = internal_source().pk
    received = timezone.now()
    inserted = rows_insert(
        Event,
        [
            {
                "source_id": source_id,
                "message_id": row["message_id"],
                "type": EventType.TRACK,
                "name": row["name"],
                "user_id": row.get("user_id", ""),
                "anonymous_id": "",
                "error": "",
                "customer_id": row["customer_id"],
                "properties": row.get("properties") or {},
                "timestamp": at,
                "received_at": received,
            }
            for row in rows
        ],
        returning=("id",),
    )
    ids = sorted(pk for (pk,) in inserted)
    enqueue_events(ids)
    return ids
