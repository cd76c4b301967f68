"""Events the product records itself (profile updates, case resolved, email opened...)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from journeys.choices import EventStatus, EventType
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


def internal_event_row(*, source_id: int, customer: Customer, name: str, properties: dict | None = None,
                       traits: dict | None = None, changes: dict | None = None, at: datetime,
                       message_id: str | None = None, context: dict | None = None) -> dict:
    """The events_insert row of an internal event (an identify when it carries traits)."""
    return {
        "source_id": source_id, "message_id": message_id or f"int-{uuid.uuid4()}",
        "type": EventType.IDENTIFY if traits else EventType.TRACK, "name": name, "user_id": customer.external_id,
        "customer_id": customer.pk, "properties": properties or {}, "traits": traits or {}, "changes": changes or {},
        "context": context or {}, "timestamp": at, "received_at": timezone.now(),
    }


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
) -> Event | None:
    """Store an internal event in the outbox so journeys can react to it like any other.

    `message_id` makes it idempotent (e.g. one `Email Opened` per delivery). None for an erased
    profile: a tombstone takes no new data (an agent resolving its old case, a late report).
    """
    from journeys.engine.queue import enqueue_events

    if customer.erased_at is not None or Customer.objects.filter(pk=customer.pk, erased_at__isnull=False).exists():
        return None  # (asked of the database too: the caller's copy may predate the erasure)

    from journeys.services.bulk_ingest import events_insert

    at = at or timezone.now()
    source = internal_source()
    mid = message_id or f"int-{uuid.uuid4()}"
    ids = events_insert([internal_event_row(source_id=source.pk, customer=customer, name=name, properties=properties,
                                            traits=traits, changes=changes, at=at, message_id=mid, context=context)])
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


@dataclass(frozen=True)
class InternalEvent:
    """One product-made event of a batch (see events_record_internal)."""

    customer_id: int
    user_id: str
    name: str
    message_id: str
    properties: dict
    at: datetime


def events_record_internal(*, events: list[InternalEvent]) -> list[int]:
    """event_record_internal for many events with one INSERT and one enqueue; returns the new
    events' ids. Events nothing reacts to (`events_unheard`: no trigger, goal, waiting run or
    stage rule) are stored already processed, kept for the timeline, reports and segments.
    Each message id is derived from what happened (a transition, a delivery), so a
    repeat is skipped by the event-key claim. Runs in the caller's transaction (the rows are the
    outbox): the stage refresh's `Stage Entered`, the dispatcher's `Message Sent` / `Failed`."""
    from journeys.engine.listeners import events_unheard
    from journeys.engine.queue import enqueue_events
    from journeys.services.bulk_ingest import events_insert

    if not events:
        return []
    erased = set(Customer.objects.filter(pk__in={e.customer_id for e in events}, erased_at__isnull=False)
                 .values_list("pk", flat=True))
    events = [e for e in events if e.customer_id not in erased]  # a tombstone takes no new data (a send
    # that was under way while it was erased would put its old user id back on it)
    if not events:
        return []
    source_id, received = internal_source().pk, timezone.now()
    unheard = events_unheard({e.name for e in events})
    ids, pending = [], []
    for heard in (False, True):  # one INSERT each for the events stored processed and those to process
        group = [e for e in events if (e.name not in unheard) == heard]
        if not group:
            continue
        inserted = events_insert([
            {
                "source_id": source_id, "message_id": e.message_id, "type": EventType.TRACK, "name": e.name,
                "user_id": e.user_id, "customer_id": e.customer_id, "properties": e.properties or {},
                "timestamp": e.at, "received_at": received,
                "status": EventStatus.PENDING if heard else EventStatus.PROCESSED,
                "processed_at": None if heard else received,
            }
            for e in group
        ])
        ids += inserted
        if heard:
            pending += inserted
    enqueue_events(pending)
    return sorted(ids)
