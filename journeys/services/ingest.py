"""Event ingestion: validated payloads in, Event rows (the outbox) out."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, OperationalError, transaction
from django.utils import timezone

try:
    from psycopg import errors as psycopg_errors
except ImportError:  # SQLite-only installs
    psycopg_errors = None

from journeys.choices import EventStatus, EventType, IdentityKind
from journeys.models import EventKey, Source
from journeys.services.bulk_ingest import customers_precreate, customers_save, events_insert, identity_keys_lock
from journeys.services.client_ip import event_ip
from journeys.services.event_parsing import ParsedEvent, check_event_size, event_with_defaults, parse_event
from journeys.services.identity import IdentityMap, customer_apply_traits, customer_resolve, phone_lookup_values
from journeys.services.quarantine_store import quarantine_store
from journeys.errors import EventValidationError, PayloadTooLarge

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestResult:
    stored: int
    duplicates: int
    event_ids: list[int]
    history: int = 0  # of those stored, how many as history (they start no workflow)


@dataclass(slots=True)
class Rejection:
    """One event refused while the rest of its request is stored: it goes to the quarantine."""

    index: int | None  # position in the batch (None: a single-event endpoint)
    field: str
    code: str
    message: str
    payload: object  # the event as sent (before the batch defaults)


@dataclass(frozen=True, slots=True)
class ReceiveResult:
    stored: int
    duplicates: int
    event_ids: list[int]
    rejected: list[Rejection]


def _event_check(
    raw: object, *, index: int | None, prefix: str, received_at: datetime, event_type: str | None,
    defaults: dict | None, max_bytes: int,
) -> tuple[ParsedEvent, int]:
    """Merge the batch defaults into one event, check what storage needs (depth, size, NUL,
    surrogates, finite numbers) on the merged event, and parse it; returns it with its size."""
    if not isinstance(raw, dict):
        raise EventValidationError("must be a JSON object", field=prefix or "body")
    merged = event_with_defaults(raw, defaults)
    size = check_event_size(merged, max_bytes=max_bytes, prefix=prefix)
    parsed = parse_event(merged, received_at=received_at, event_type=event_type, prefix=prefix)
    parsed.index = index
    return parsed, size


def _check_count(payloads: list, in_batch: bool) -> None:
    limit = settings.EVENT_API["MAX_BATCH_EVENTS"]
    if in_batch and len(payloads) > limit:
        raise PayloadTooLarge(f"{len(payloads)} events in one batch; the limit is {limit}", field="batch")


def events_parse(
    *, payloads: list, received_at: datetime, event_type: str | None = None, batch_defaults: dict | None = None,
    in_batch: bool = False,
) -> list[ParsedEvent]:
    """Validate every payload before anything is stored; the first bad one raises (all or nothing)."""
    _check_count(payloads, in_batch)
    max_bytes = settings.EVENT_API["MAX_EVENT_BYTES"]
    return [
        _event_check(raw, index=index if in_batch else None, prefix=f"batch[{index}]" if in_batch else "",
                     received_at=received_at, event_type=event_type, defaults=batch_defaults, max_bytes=max_bytes)[0]
        for index, raw in enumerate(payloads)
    ]


def events_receive(
    *, source: Source, payloads: list, received_at: datetime, ip: str | None = None, event_type: str | None = None,
    batch_defaults: dict | None = None, in_batch: bool = False,
) -> ReceiveResult:
    """What the tracking API does with a request: store the good events, quarantine each bad one.

    A bad event (a field, its size, nesting, the event catalog under the `reject` policy) is
    set aside with its payload, field and reason, in the same transaction as the good ones, and
    the answer lists it. A `strict` source keeps all or nothing: the first bad event raises and
    nothing is stored. Errors of the request itself (too many events; batch defaults that would
    make the stored batch larger than a batch may be) always raise.
    """
    from journeys.services.catalog import catalog_split

    _check_count(payloads, in_batch)
    limits = settings.EVENT_API
    good: list[ParsedEvent] = []
    rejected: list[Rejection] = []
    stored_bytes = 0
    for index, raw in enumerate(payloads):
        prefix = f"batch[{index}]" if in_batch else ""
        try:
            parsed, size = _event_check(raw, index=index if in_batch else None, prefix=prefix, received_at=received_at,
                                        event_type=event_type, defaults=batch_defaults,
                                        max_bytes=limits["MAX_EVENT_BYTES"])
        except (EventValidationError, PayloadTooLarge) as exc:
            if source.strict:
                raise
            rejected.append(Rejection(index if in_batch else None, exc.field or prefix, exc.code, exc.message, raw))
            continue
        stored_bytes += size
        good.append(parsed)
    if batch_defaults and stored_bytes > limits["MAX_BATCH_BYTES"]:
        # The batch-level context/integrations are copied into every event: bound what one request stores.
        raise PayloadTooLarge(
            f"merged into every event, the batch-level context and integrations make the batch {stored_bytes} bytes;"
            f" the limit is {limits['MAX_BATCH_BYTES']} bytes: send them per event, or smaller batches",
            field="context" if "context" in batch_defaults else "integrations",
        )
    good, refused = catalog_split(policy=source.schema_policy, events=good, strict=source.strict)
    rejected.extend(Rejection(e.index, exc.field or "", "schema", exc.message, payloads[e.index or 0]) for e, exc in refused)
    for attempt in range(DEADLOCK_TRIES):
        try:
            return _receive_stored(source=source, good=good, rejected=list(rejected), payloads=payloads, ip=ip,
                                   received_at=received_at, event_type=event_type, batch_defaults=batch_defaults)
        except OperationalError as exc:
            # A deadlock with the engine rolled the whole batch back: store it again (bounded), so the
            # client gets no 500 and the beacon endpoint, which never retries, loses nothing.
            if (not _is_deadlock(exc) or attempt == DEADLOCK_TRIES - 1
                    or transaction.get_connection().in_atomic_block):
                raise
            logger.warning("ingest batch of %d events hit a deadlock; retrying (%d)", len(good), attempt + 1)
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
    raise AssertionError("unreachable")


DEADLOCK_TRIES = 3


def _is_deadlock(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, psycopg_errors.DeadlockDetected) if psycopg_errors else False


def _receive_stored(*, source: Source, good: list[ParsedEvent], rejected: list[Rejection], payloads: list[dict],
                    ip, received_at, event_type, batch_defaults) -> ReceiveResult:
    """Store `good` and quarantine `rejected`, in one transaction, in at most two passes.

    The set-based pass stores the whole batch; if one event's identities cannot be resolved, it is
    rolled back and a second pass stores each event in its own savepoint, quarantining those that
    fail: linear in the batch, however many fail."""
    def quarantine() -> None:
        if rejected:
            rejected.sort(key=lambda r: r.index or 0)
            quarantine_store(source=source, rejections=rejected, received_at=received_at, ip=ip,
                             endpoint_type=event_type or "", batch_defaults=batch_defaults)

    try:
        with transaction.atomic():
            result = event_ingest(source=source, events=good, ip=ip, catalog=False)
            quarantine()
        return ReceiveResult(result.stored, result.duplicates, result.event_ids, rejected)
    except IdentityResolutionError:
        if source.strict:
            raise
    stored = duplicates = 0
    event_ids: list[int] = []
    with transaction.atomic():
        for event in good:
            try:
                with transaction.atomic():
                    one = event_ingest(source=source, events=[event], ip=ip, catalog=False)
            except IdentityResolutionError as exc:
                rejected.append(Rejection(event.index, exc.field or "", exc.code, exc.message,
                                          payloads[event.index or 0]))
                continue
            stored += one.stored
            duplicates += one.duplicates
            event_ids.extend(one.event_ids)
        quarantine()
    return ReceiveResult(stored, duplicates, event_ids, rejected)


class IdentityResolutionError(EventValidationError):
    """One event's ids or traits could not be resolved to a customer (a bug or a case nobody
    foresaw, not a transient database error): `events_receive` quarantines that event, with the
    field, and stores the rest of its request, rather than losing the whole batch."""

    def __init__(self, message: str, *, field: str, event: ParsedEvent):
        super().__init__(message, field=field)
        self.event = event


@contextmanager
def _resolution_of(event: ParsedEvent, field: str) -> Iterator[None]:
    """Turn any failure of `event`'s identity resolution into an IdentityResolutionError naming it."""
    try:
        yield
    except DatabaseError:
        # the database's or the server's, not the event's (a deadlock, a lost connection, an
        # IntegrityError from a race, an aborted transaction): the request fails and the client retries
        raise
    except Exception as exc:
        prefix = f"batch[{event.index}]." if event.index is not None else ""
        logger.exception("identity resolution failed for %s%s", prefix, field)
        raise IdentityResolutionError(f"identity resolution failed ({type(exc).__name__}: {exc})",
                                      field=prefix + field, event=event) from exc


def trigger_max_age() -> timedelta | None:
    """How old an event may be when accepted and still start workflows (None: any age)."""
    seconds = int(getattr(settings, "EVENT_TRIGGER_MAX_AGE_S", 0) or 0)
    return timedelta(seconds=seconds) if seconds > 0 else None


def _history_fields(event: ParsedEvent, history: str, accepted_at: datetime, replayed: bool) -> dict:
    """The status an event is stored with: pending (the engine takes it) or history, with why.

    Its age is measured when it is accepted, not when it was first received: an event
    quarantined a week ago and replayed now (`replayed`) keeps its receipt time (for clock-skew
    correction) but is as stale as one received now. A live request's events are accepted as
    they are received, and their reason says so."""
    max_age = trigger_max_age()
    accepted = max(event.received_at, accepted_at)
    if not history and max_age is not None and accepted - event.timestamp > max_age:
        age = accepted - event.timestamp
        when = (f"accepted (replayed; first received {event.received_at:%Y-%m-%d %H:%M} UTC)" if replayed
                else "received")
        history = (f"history: its timestamp was {age.days} days {age.seconds // 3600} h old when {when}, older than "
                   f"EVENT_TRIGGER_MAX_AGE_S ({int(max_age.total_seconds())} s), so it started no workflow")
    if not history:
        return {"status": EventStatus.PENDING, "processed_at": None, "error": ""}
    return {"status": EventStatus.HISTORY, "processed_at": accepted, "error": history}


def event_ingest(
    *, source: Source, events: list[ParsedEvent], ip: str | None = None, catalog: bool = True, history: str = "",
    replayed: bool = False,
) -> IngestResult:
    """Store a validated request in one transaction and hand it to the engine.

    Duplicates (same source and messageId, earlier or within this request) are
    accepted and ignored. Identity resolution and profile traits are applied in
    the same transaction, so an event is never stored without its customer.

    An event stored as history (`history`: why, for all of them, e.g. an import that did not opt
    in; or its timestamp older than EVENT_TRIGGER_MAX_AGE_S when accepted, i.e. now) starts no
    workflow, and its row says why (status `history`, the reason in `error`). It counts for
    segments and reports, and it still stops or resolves existing work, in this transaction
    (`history_events_settle`): it converts runs whose goal it is, closes the inactivity windows
    it follows up, and answers a wait for it that began before it happened.
    `replayed`: the events were received earlier (the quarantine's replay), which their reason says.
    """
    from journeys.engine.processor import history_events_settle
    from journeys.engine.queue import enqueue_events
    from journeys.services.catalog import catalog_apply
    from journeys.services.rechecks import customers_recheck

    if catalog:  # may reject before anything is stored (events_receive has split them already)
        catalog_apply(policy=source.schema_policy, events=events)
    if not events:
        return IngestResult(stored=0, duplicates=0, event_ids=[])
    seen: set[str] = set()
    unique: list[ParsedEvent] = []
    for event in events:
        if event.message_id not in seen:
            seen.add(event.message_id)
            unique.append(event)
    actor = f"source:{source.name}"
    accepted_at = timezone.now()

    with transaction.atomic():
        existing: set[str] = set()
        ids = [e.message_id for e in unique]
        for i in range(0, len(ids), 900):
            existing.update(
                EventKey.objects.filter(source=source, message_id__in=ids[i : i + 900]).values_list("message_id", flat=True)
            )
        fresh = [e for e in unique if e.message_id not in existing]
        if not fresh:
            return IngestResult(stored=0, duplicates=len(events), event_ids=[])

        keys: set[tuple[str, str]] = set()
        legacy: set[tuple[str, str]] = set()  # phone numbers as typed, as identities stored before 0028 hold them
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
                if isinstance(phone, str) and (spellings := phone_lookup_values(phone)):
                    keys.add((IdentityKind.PHONE, spellings[0][:255]))
                    legacy.update((IdentityKind.PHONE, v[:255]) for v in spellings[1:])
        imap = IdentityMap(keys | legacy)
        # the only keys this batch may insert (a number is stored normalised, never as typed)
        new_keys = [key for key in keys if key not in imap.ids]
        if identity_keys_lock(new_keys):  # waited for a batch that may have stored some of them
            imap.refresh(new_keys)
        # after the key locks (taken first by every batch, so the two kinds of lock cannot cross)
        imap.customers_lock(set(imap.ids.values()))
        customers_precreate(imap, fresh)

        rows = []
        for e in fresh:
            with _resolution_of(e, "previousId" if e.type == EventType.ALIAS and e.previous_id else
                                "userId" if e.user_id else "anonymousId"):
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
            with _resolution_of(e, "traits"):
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
                "previous_id": e.previous_id,
                "group_id": e.group_id,
                "category": e.category,
                "channel": e.channel,
                "version": e.version,
                "customer_id": customer.pk,
                "properties": e.properties,
                "traits": e.traits,
                "context": e.context,
                "integrations": e.integrations,
                "metadata": e.metadata,
                "other": e.other,
                "changes": changes,
                "violations": e.extra.get("violations", []),
                "timestamp": e.timestamp,
                "original_timestamp": e.original_timestamp,
                "sent_at": e.sent_at,
                "received_at": e.received_at,
                "ip": event_ip(context=e.context, sender=ip),
                **_history_fields(e, history, accepted_at, replayed),
            })
        if imap.redirects:  # a later event of this batch merged a profile an earlier event pointed at
            for row in rows:
                row["customer_id"] = imap.survivor(row["customer_id"])
        imap.merges_flush()  # the merges its events decided, set-based
        imap.claims_flush()
        customers_save(imap.customers[pk] for pk in imap.dirty if pk in imap.customers)
        # ON CONFLICT / ignore_conflicts covers a concurrent request carrying the same messageId.
        live = [row for row in rows if row["status"] == EventStatus.PENDING]
        past = [row for row in rows if row["status"] != EventStatus.PENDING]
        live_ids = events_insert(live)
        past_ids = events_insert(past)
        event_ids = sorted(live_ids + past_ids)  # one INSERT each (they differ in their status)
        if past_ids:
            history_events_settle(event_ids=past_ids)  # what they stop: goals, windows, waits
        if past:  # event-count rules see them as they see processed events
            customers_recheck([(row["customer_id"], row["name"]) for row in past])
        enqueue_events(live_ids)
    return IngestResult(stored=len(event_ids), duplicates=len(events) - len(event_ids), event_ids=event_ids,
                        history=len(past_ids))
