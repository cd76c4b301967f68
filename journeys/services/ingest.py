"""Event ingestion: validated payloads in, Event rows (the outbox) out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction

from journeys.choices import EventType, IdentityKind
from journeys.models import Event, Source
from journeys.services.bulk_ingest import customers_precreate, customers_save, events_insert, identity_keys_lock
from journeys.services.event_parsing import ParsedEvent, check_event_size, parse_event
from journeys.services.identity import IdentityMap, customer_apply_traits, customer_resolve
from journeys.errors import EventValidationError, PayloadTooLarge

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestResult:
    stored: int
    duplicates: int
    event_ids: list[int]


def events_parse(
    *, payloads: list, received_at: datetime, event_type: str | None = None, batch_defaults: dict | None = None,
    in_batch: bool = False,
) -> list[ParsedEvent]:
    """Validate every payload before anything is stored (a bad one rejects the request)."""
    limits = settings.EVENT_API
    if in_batch and len(payloads) > limits["MAX_BATCH_EVENTS"]:
        raise PayloadTooLarge(
            f"{len(payloads)} events in one batch; the limit is {limits['MAX_BATCH_EVENTS']}", field="batch"
        )
    parsed = []
    for index, raw in enumerate(payloads):
        prefix = f"batch[{index}]" if in_batch else ""
        if in_batch:
            if not isinstance(raw, dict):
                raise EventValidationError("must be a JSON object", field=prefix)
            check_event_size(raw, max_bytes=limits["MAX_EVENT_BYTES"], prefix=prefix)
        parsed.append(
            parse_event(raw, received_at=received_at, event_type=event_type, prefix=prefix, defaults=batch_defaults)
        )
    return parsed


def event_ingest(*, source: Source, events: list[ParsedEvent]) -> IngestResult:
    """Store a validated request in one transaction and hand it to the engine.

    Duplicates (same source and messageId, earlier or within this request) are
    accepted and ignored. Identity resolution and profile traits are applied in
    the same transaction, so an event is never stored without its customer.
    """
    from journeys.engine.queue import enqueue_events
    from journeys.services.catalog import catalog_apply

    catalog_apply(policy=source.schema_policy, events=events)  # may reject before anything is stored
    seen: set[str] = set()
    unique: list[ParsedEvent] = []
    for event in events:
        if event.message_id not in seen:
            seen.add(event.message_id)
            unique.append(event)
    actor = f"source:{source.name}"

    with transaction.atomic():
        existing: set[str] = set()
        ids = [e.message_id for e in unique]
        for i in range(0, len(ids), 900):
            existing.update(
                Event.objects.filter(source=source, message_id__in=ids[i : i + 900]).values_list("message_id", flat=True)
            )
        fresh = [e for e in unique if e.message_id not in existing]
        if not fresh:
            return IngestResult(stored=0, duplicates=len(events), event_ids=[])

        keys: set[tuple[str, str]] = set()
        for e in fresh:
            if e.user_id:
                keys.add((IdentityKind.USER_ID, e.user_id))
            if e.anonymous_id:
                keys.add((IdentityKind.ANONYMOUS_ID, e.anonymous_id))
            if e.previous_id:
                keys.add((IdentityKind.USER_ID, e.previous_id))
                keys.add((IdentityKind.ANONYMOUS_ID, e.previous_id))
            if e.type == EventType.IDENTIFY:  # so claiming a known email is a lookup, not a failed INSERT
                email, phone = e.traits.get("email"), e.traits.get("phone")
                if isinstance(email, str) and email:
                    keys.add((IdentityKind.EMAIL, email.strip().lower()[:255]))
                if isinstance(phone, str) and phone:
                    keys.add((IdentityKind.PHONE, phone.strip()[:255]))
        imap = IdentityMap(keys)
        new_keys = [key for key in keys if key not in imap.ids]  # the only keys this batch may insert
        if identity_keys_lock(new_keys):  # waited for a batch that may have stored some of them
            imap.refresh(new_keys)
        customers_precreate(imap, fresh)

        rows = []
        for e in fresh:
            customer = customer_resolve(
                imap=imap,
                user_id=e.user_id,
                anonymous_id=e.anonymous_id,
                previous_id=e.previous_id if e.type == EventType.ALIAS else "",
                seen_at=e.timestamp,
                actor=actor,
                allow_known_merge=source.allow_known_merges, source=source, message_id=e.message_id,
            )
            traits: dict = {}
            if e.type == EventType.IDENTIFY:
                traits = e.traits
            elif e.type == EventType.GROUP:
                traits = {"group_id": e.group_id, **{f"group_{k}": v for k, v in e.traits.items()}}
            changes = customer_apply_traits(imap=imap, customer=customer, traits=traits, context=e.context)
            if customer.last_seen is None or e.timestamp > customer.last_seen:
                customer.last_seen = e.timestamp
                imap.dirty.add(customer.pk)
            if customer.first_seen is None or e.timestamp < customer.first_seen:
                customer.first_seen = e.timestamp
                imap.dirty.add(customer.pk)
            rows.append({
                "source_id": source.pk,
                "message_id": e.message_id,
                "type": e.type,
                "name": e.name,
                "user_id": e.user_id,
                "anonymous_id": e.anonymous_id,
                "customer_id": customer.pk,
                "properties": e.properties,
                "traits": e.traits,
                "context": e.context,
                "integrations": e.integrations,
                "changes": changes,
                "violations": e.extra.get("violations", []),
                "timestamp": e.timestamp,
                "original_timestamp": e.original_timestamp,
                "sent_at": e.sent_at,
                "received_at": e.received_at,
            })
        if imap.redirects:  # a later event of this batch merged a profile an earlier event pointed at
            for row in rows:
                row["customer_id"] = imap.survivor(row["customer_id"])
        imap.claims_flush()
        customers_save(imap.customers[pk] for pk in imap.dirty if pk in imap.customers)
        # ON CONFLICT / ignore_conflicts covers a concurrent request carrying the same messageId.
        event_ids = events_insert(rows)
        enqueue_events(event_ids)
    return IngestResult(stored=len(event_ids), duplicates=len(events) - len(event_ids), event_ids=event_ids)
