"""Keeping the event table bounded: retention per source, dedup keys, partitions (PostgreSQL).

`events_housekeeping` runs on a q2 schedule. Every step works in bounded batches, each in its
own short transaction, and stops at a time budget, so a backlog (a retention switched on over
years of events) is worked off over several runs without one huge DELETE or long lock.

On PostgreSQL journeys_event is partitioned by id range (migration 0013, docs/SCALING.md):
partitions are created ahead of the id sequence here, and a partition whose rows are all past
every source's retention, or that retention emptied, is dropped whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

from journeys.models import Event, EventKey, ProfileCheck, Source
from journeys.services.bulk_ingest import event_id_sequence
from journeys.services.history_retention import profiles_check_later, relations_detach
from journeys.services.internal_events import INTERNAL_SOURCE, internal_source
from journeys.services.rechecks import customers_recheck, rechecks_counted_sql

logger = logging.getLogger(__name__)

BATCH = 5000
TABLE = Event._meta.db_table
# A partition's newest row by id is, to within one request's duration, its newest by receipt.
DROP_MARGIN = timedelta(hours=1)


def _detach(ids_filter: dict) -> None:
    """What points at the events about to go, as each relation says (SET_NULL, CASCADE)."""
    relations_detach(Event, ids_filter)


def events_delete(*, ids: list[int], source: Source | None = None) -> int:
    """Delete these events (and what their relations say must follow) in one short transaction.
    `source`: theirs, if they all have the same (the product's own keys live as long as their
    events: looked up only for events of the internal source, or of any when it is not given)."""
    if not ids:
        return 0
    with transaction.atomic():
        _detach({"in": ids})
        if source is None or source.name == INTERNAL_SOURCE:
            _internal_keys_delete(event_ids={"event_id__in": ids},
                                  newest=Event.objects.filter(pk__in=ids).aggregate(at=models.Max("received_at"))["at"])
        with connection.cursor() as cur:
            cur.execute(f"DELETE FROM {TABLE} WHERE id IN ({', '.join(['%s'] * len(ids))})"
                        " RETURNING customer_id, name", ids)
            gone = cur.fetchall()
        customers_recheck(gone)  # a stage or segment rule's count of them drops
        profiles_check_later(customer for customer, _ in gone)  # an anonymous profile may hold nothing now
        return len(gone)


def _internal_keys_delete(*, event_ids: dict, newest: datetime | None) -> None:
    """The product's own keys of these events (a key has its event's received_at): found through
    the (source, received_at) index up to the newest of them, not by a scan of every key."""
    if newest is None:
        return
    keys = EventKey.objects.filter(source=internal_source(), received_at__lte=newest, **event_ids)
    pks = list(keys.values_list("pk", flat=True))
    if pks:
        EventKey.objects.filter(pk__in=pks).delete()


def events_retention_run(*, now: datetime | None = None, budget_s: float = 20.0, batch: int = BATCH) -> int:
    """Delete events older than their source's `retention_days`, oldest first, `batch` at a time."""
    now = now or timezone.now()
    deadline = time.monotonic() + budget_s
    deleted = 0
    for source in Source.objects.exclude(retention_days=None).order_by("pk"):
        cutoff = now - timedelta(days=source.retention_days)
        while time.monotonic() < deadline:
            ids = list(Event.objects.filter(source=source, received_at__lt=cutoff).order_by("received_at")
                       .values_list("pk", flat=True)[:batch])
            deleted += events_delete(ids=ids, source=source)
            if len(ids) < batch:
                break
    return deleted


def event_keys_purge(*, now: datetime | None = None, budget_s: float = 10.0, batch: int = BATCH) -> int:
    """Forget (source, messageId) keys older than EVENT_API['DEDUP_DAYS'] (not the product's own)."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.EVENT_API["DEDUP_DAYS"])
    deadline = time.monotonic() + budget_s
    purged = 0
    for source in Source.objects.exclude(name=INTERNAL_SOURCE).order_by("pk"):  # (source, received_at) index
        while time.monotonic() < deadline:
            ids = list(EventKey.objects.filter(source=source, received_at__lt=cutoff)
                       .order_by("received_at").values_list("pk", flat=True)[:batch])
            if ids:
                EventKey.objects.filter(pk__in=ids).delete()
            purged += len(ids)
            if len(ids) < batch:
                break
    return purged


# -- PostgreSQL partitions -----------------------------------------------------------------------


def _partitions(cur) -> list[tuple[str, int | None, int | None]]:
    """(name, low, high) of each range partition, in order (None: MINVALUE); the default one left out."""
    cur.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass", [TABLE])
    found = []
    for name, bound in cur.fetchall():
        if bound == "DEFAULT":
            continue
        low, high = bound.split("FROM (", 1)[1].split(") TO (")
        parse = lambda v: None if v.strip() == "MINVALUE" else int(v.strip().strip("'"))  # noqa: E731
        found.append((name, parse(low), parse(high.rstrip(")"))))
    return sorted(found, key=lambda p: -1 if p[1] is None else p[1])


def _partitioned() -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = %s::regclass", [TABLE])
        return cur.fetchone() is not None


def _last_id(cur) -> int:
    cur.execute(f"SELECT last_value FROM {event_id_sequence()}")
    return cur.fetchone()[0]


# An event's timestamp is never more than this ahead of its receipt (the API clamps it to 5 minutes;
# internal events and imports are stamped when recorded): a day, to be generous.
RECEIPT_LEAD = timedelta(days=1)


def events_id_floor(*, happened_after: datetime | Callable[[], datetime | None]) -> int:
    """The lowest id an event that happened at or after this moment can have, to a partition's
    granularity (PostgreSQL; 0 elsewhere): the low bound of the first partition that holds an event
    received within RECEIPT_LEAD before it. Ids follow arrival, so the partitions before it hold only
    older events, and a query over events since then can say `id >= floor` and skip them (pruned
    when planned), instead of probing every partition of years of events. Every row of a skipped
    partition was received over RECEIPT_LEAD before the moment, so it happened before it, whatever
    its id (a replayed event keeps its old receipt). A partition still filling (or ahead of the
    sequence) is always kept. Costs one statement: an index probe per closed partition and source.
    `happened_after` may be a function, asked only when some partition is closed (None: nothing to skip)."""
    if not _partitioned():
        return 0
    floor = 0
    with connection.cursor() as cur:
        last = _last_id(cur)
        closed = [(name, high) for name, _, high in _partitions(cur) if high <= last]
        if not closed:
            return 0
        moment = happened_after() if callable(happened_after) else happened_after
        if moment is None:
            return 0
        received_after = moment - RECEIPT_LEAD
        sources = list(Source.objects.values_list("pk", flat=True))
        # each partition's newest receipt, by source: one probe of its (source, received_at) index each
        cur.execute("SELECT " + ", ".join(
            f"(SELECT max(m) FROM (SELECT (SELECT max(received_at) FROM {name} WHERE source_id = s) AS m"
            " FROM unnest(%(sources)s::bigint[]) AS s) x)" for name, _ in closed), {"sources": sources})
        for (_, high), newest in zip(closed, cur.fetchone()):
            if newest is not None and newest >= received_after:
                break
            floor = high
    return floor


def events_partitions_ensure(*, ahead: int = 2) -> list[str]:
    """Create range partitions so that at least `ahead` empty ones lie beyond the id sequence."""
    if not _partitioned():
        return []
    size = settings.EVENT_API["PARTITION_IDS"]
    made = []
    with connection.cursor() as cur:
        parts = _partitions(cur)
        top = parts[-1][2] if parts else 0
        want = _last_id(cur) + ahead * size
        while top < want:
            name = f"{TABLE}_p{top // size}" if top % size == 0 else f"{TABLE}_from{top}"
            try:
                with transaction.atomic():
                    cur.execute(f"CREATE TABLE {name} PARTITION OF {TABLE} FOR VALUES FROM ({top}) TO ({top + size})")
            except Exception as exc:  # noqa: BLE001 - e.g. rows of that range already in the default partition
                logger.warning("event partition %s not created: %s", name, exc)
                break
            made.append(name)
            top += size
    return made


def events_partitions_drop(*, now: datetime | None = None) -> list[str]:
    """Drop whole partitions that are behind the sequence and either empty (retention emptied them) or
    entirely older than every source's retention (only when every source has one)."""
    if not _partitioned():
        return []
    now = now or timezone.now()
    retentions = list(Source.objects.values_list("retention_days", flat=True))
    expired_before = (now - timedelta(days=max(retentions)) if retentions and None not in retentions else None)
    dropped, recount = [], []
    with connection.cursor() as cur:
        last = _last_id(cur)
        for name, low, high in _partitions(cur)[:-1]:
            if high > last:
                break  # still filling (or ahead)
            cur.execute(f"SELECT received_at FROM {name} ORDER BY id DESC LIMIT 1")
            newest = cur.fetchone()
            # ids follow arrival, so the last row by id is (to the length of one request) the newest
            if newest is not None and not (expired_before and newest[0] + DROP_MARGIN < expired_before):
                continue
            with transaction.atomic():
                if newest is not None:
                    _detach({"gte": low if low is not None else 0, "lt": high})
                    # the newest by receipt, not by id (a replayed event keeps its old received_at)
                    cur.execute(f"SELECT max(received_at) FROM {name}")
                    _internal_keys_delete(event_ids={"event_id__gte": low or 0, "event_id__lt": high},
                                          newest=cur.fetchone()[0])
                    cur.execute(f"INSERT INTO {ProfileCheck._meta.db_table} (customer_id) SELECT DISTINCT customer_id"
                                f" FROM {name} WHERE customer_id IS NOT NULL ON CONFLICT DO NOTHING")
                    counted = rechecks_counted_sql()
                    if counted is not None:  # a rule's counts of its customers drop: marked
                        where, params = counted  # once dropped (holding no lock of the event table)
                        cur.execute(f"SELECT DISTINCT customer_id FROM {name}"
                                    f" WHERE customer_id IS NOT NULL AND {where}", params)
                        recount += [pk for (pk,) in cur.fetchall()]
                cur.execute("SET CONSTRAINTS ALL IMMEDIATE")  # deferred checks pending on its rows run first
                cur.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {name}")  # checks nothing points into it
                cur.execute(f"DROP TABLE {name}")
            dropped.append(name)
    customers_recheck([(pk, None) for pk in recount])
    return dropped


def events_housekeeping(*, now: datetime | None = None) -> dict:
    """The scheduled upkeep of the event tables and their neighbours (every few minutes)."""
    from journeys.services.quarantine_store import quarantine_purge
    from journeys.services.ratelimit import rate_counters_purge
    from journeys.services.task_results import task_results_prune

    return {
        "partitions_created": events_partitions_ensure(),
        "events_deleted": events_retention_run(now=now),
        "partitions_dropped": events_partitions_drop(now=now),
        "keys_purged": event_keys_purge(now=now),
        "quarantine_purged": quarantine_purge(now=now),
        "rate_counters_purged": rate_counters_purge(now=now),
        "task_results_pruned": task_results_prune(),
    }
