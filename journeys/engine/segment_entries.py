"""Segment-entry triggers without an event: the hourly refresh.

An event that changes a profile fires segment entry at once (journeys.engine.processor). A
customer can also come into a segment with no event: time passes ("inactive for 30 days"),
an import or a direct update changes a trait. The refresh (hourly, with the stage refresh)
compares customers with the members recorded last time (`SegmentMember`) and:

- records who joined with one INSERT ... ON CONFLICT DO NOTHING RETURNING (so only one refresh
  can count a customer as new) and enrols them set-based, trigger key `segment:<refresh>`,
  unless they already entered this workflow since the previous refresh (the event path did);
- forgets who left (they may enter again when they come back).

Which customers it compares: on PostgreSQL, for the live rules that translate, only those due
(`SegmentRecheck`, journeys.services.rechecks): changed since the last refresh, or at the
moment one of those rules' answer may change with time alone; all of them in one statement a
chunk. After the set of those versions changes, everyone once. A rule that does not translate
(and every rule on SQLite) is walked whole each hour, a version at a time, through the
segment service in id pages.

The first refresh after a version goes live only records the members: entry is a change, and
customers already in the segment have not entered it. It runs at the next minute tick, not the
next hour (journeys.engine.scheduler.segment_entries_new), so that "already in" means in at go-live. Its cost is the segment's evaluation
and the changes, never one statement per customer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import DatabaseError, OperationalError, connection, transaction

from journeys.choices import TriggerKind
from journeys.engine.batch import ids_in, ids_lateral
from journeys.engine.compiled import load_version
from journeys.engine.enrolment import Candidate, enroll_candidates
from journeys.models import (
    Customer,
    JourneyRun,
    SegmentMember,
    SegmentRecheck,
    SegmentRules,
    TriggerState,
)
from journeys.services.rechecks import (
    rechecks_claim,
    rechecks_drop_missing,
    rechecks_mark,
    rechecks_write,
)

logger = logging.getLogger(__name__)

PAGE = 2000


def _members(version_id: int, low: int, high: int | None) -> set[int]:
    rows = SegmentMember.objects.filter(version_id=version_id, customer_id__gt=low)
    if high is not None:
        rows = rows.filter(customer_id__lte=high)
    return set(rows.values_list("customer_id", flat=True))


def _record(version_id: int, customer_ids: list[int]) -> list[int]:
    """Insert memberships; returns the customers this call inserted (a concurrent refresh's are not)."""
    if not customer_ids:
        return []
    table = SegmentMember._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"INSERT INTO {table} (version_id, customer_id) SELECT %s, c FROM unnest(%s::bigint[]) AS c "
                           f"ON CONFLICT DO NOTHING RETURNING customer_id", [version_id, customer_ids])
            return sorted(row[0] for row in cursor.fetchall())
        inserted = []
        for i in range(0, len(customer_ids), 400):  # one statement per 400 (SQLite's parameter limit)
            page = customer_ids[i:i + 400]
            cursor.execute(f"INSERT INTO {table} (version_id, customer_id) VALUES {', '.join(['(%s, %s)'] * len(page))} "
                           f"ON CONFLICT DO NOTHING RETURNING customer_id",
                           [value for customer_id in page for value in (version_id, customer_id)])
            inserted += [row[0] for row in cursor.fetchall()]
        return sorted(inserted)


def segment_members_settle(*, customers: list[Customer], now: datetime) -> int:
    """History (an import that did not opt in, an identify older than EVENT_TRIGGER_MAX_AGE_S)
    puts customers into segments without entering them: called in the transaction that stores
    it, this records them as members of each live segment-entry version whose rule they now
    match, so the next refresh sees them as already in and enrols nobody. Cost follows the
    batch: the rules evaluated for these customers (events counted for all of them at once),
    one INSERT ... ON CONFLICT DO NOTHING per version. `customers`: neither merged nor erased,
    loaded with segments.PROFILE_FIELDS. Returns the memberships recorded."""
    from journeys.rules import compile_rule
    from journeys.services.segments import customer_rule_contexts

    rules = [(v.id, v.trigger_config.get("rule", "")) for v in _live_segment_versions()]
    if not customers or not rules:
        return 0
    contexts = list(customer_rule_contexts(customers=customers, now=now))
    recorded = 0
    for vid, rule in rules:
        if not rule.strip():
            continue
        compiled = compile_rule(rule)
        recorded += len(_record(vid, sorted(c.pk for c, ctx in contexts if compiled.evaluate(ctx).value)))
    return recorded


def _live_segment_versions() -> list:
    from journeys.engine.compiled import trigger_index

    versions = (load_version(vid) for vid in trigger_index().profile_triggers)
    return [v for v in versions if v.trigger_kind == TriggerKind.SEGMENT_ENTRY]


def _entered_since(workflow_id: int, customer_ids: list[int], since: datetime | None) -> set[int]:
    if since is None or not customer_ids:
        return set()
    table = JourneyRun._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            source, params = ids_lateral(customer_ids, f"SELECT 1 FROM {table} WHERE workflow_id = %s "
                                                       f"AND customer_id = ids.id AND created_at >= %s LIMIT 1")
            cursor.execute(f"SELECT ids.id FROM {source}", [*params, workflow_id, since])
        else:
            where, params = ids_in("customer_id", customer_ids)
            cursor.execute(f"SELECT DISTINCT customer_id FROM {table} "
                           f"WHERE workflow_id = %s AND created_at >= %s AND {where}", [workflow_id, since, *params])
        return {row[0] for row in cursor.fetchall()}


def segment_entries_run(*, routed: list[tuple[int, tuple[int, int, bool] | None]], now: datetime) -> int:
    """Refresh every live segment-entry trigger (see the module docstring); returns how many runs were made."""
    from journeys.services.segments import segment_translation, utc

    now = utc(now)
    live = []
    for vid, routing in routed:
        version = load_version(vid)
        with transaction.atomic():
            state, _ = TriggerState.objects.select_for_update().get_or_create(version_id=vid)
        live.append(_Live(vid=vid, routing=routing, version=version, rule=version.trigger_config.get("rule", ""),
                          baseline=state.prepared_at is None, since=state.last_tick_at,
                          prepared=state.prepared_at))
    key = f"segment:{now.replace(second=0, microsecond=0).isoformat()}"
    enrolled = 0
    translations = [segment_translation(rule=v.rule, now=now, prefix=f"v{i}_", due=True) if v.rule.strip() else None
                    for i, v in enumerate(live)]
    # Versions whose rule translates are compared through the rechecks; any other is walked
    # whole each hour (SQLite: all of them).
    sql = [(v, t) for v, t in zip(live, translations) if t is not None]
    walked = [v for v, t in zip(live, translations) if t is None]
    complete = True  # every customer compared: a version just live has its members (prepared)
    try:
        if sql:
            done, complete = _refresh_sql(live=[v for v, _ in sql], translations=[t for _, t in sql], key=key,
                                          now=now)
            enrolled += done
    except DatabaseError:  # a translation bug must not stop the refresh: say so, compare everyone
        logger.exception("segment-entry refresh SQL failed; comparing every customer")
        sql, walked, complete = [], live, True
    if not sql:
        SegmentRules.objects.all().delete()  # nobody is marked meanwhile: the SQL refresh walks everyone again
        SegmentRecheck.objects.filter(since__isnull=False).update(since=None)  # everyone is compared below
    for v in walked:
        enrolled += _version_walk(v, key=key, now=now)
    with transaction.atomic():
        for v in live:
            if complete or v.vid in {w.vid for w in walked}:  # else a chunk of the first walk was lost: it walks again
                TriggerState.objects.filter(version_id=v.vid, prepared_at__isnull=True).update(prepared_at=now)
            TriggerState.objects.filter(version_id=v.vid).update(last_tick_at=now)
    # Versions that stopped taking entries forget their members (a later go-live starts afresh).
    stale = TriggerState.objects.filter(prepared_at__isnull=False, version__trigger_kind=TriggerKind.SEGMENT_ENTRY
                                        ).exclude(version_id__in=[v.vid for v in live]).values_list("version_id", flat=True)
    for vid in list(stale):
        with transaction.atomic():
            SegmentMember.objects.filter(version_id=vid)._raw_delete(connection.alias)
            TriggerState.objects.filter(version_id=vid).update(prepared_at=None, last_tick_at=None)
    return enrolled


@dataclass
class _Live:
    vid: int
    routing: tuple[int, int, bool] | None
    version: object  # CompiledVersion
    rule: str
    baseline: bool  # the first refresh since go-live: members are recorded, nobody enters
    since: datetime | None  # the previous refresh: who entered since (the event path) is not enrolled again
    prepared: datetime | None  # when it recorded who was in at go-live (it compared everyone then)


def _enter(v: _Live, members: set[int], stored: set[int], *, key: str, now: datetime,
           since: dict[int, datetime] | None = None) -> int:
    """Record who joined and forget who left (of the customers compared); enrol those who joined,
    but not those the event path entered since they were last compared (the previous refresh,
    or `since` for a customer left uncompared then)."""
    gone = stored - members
    if gone:
        SegmentMember.objects.filter(version_id=v.vid, customer_id__in=sorted(gone)).delete()
    joined = _record(v.vid, sorted(members - stored))
    if not joined or v.baseline:
        return 0
    by_since: dict[datetime | None, list[int]] = {}
    for pk in joined:
        earlier = (since or {}).get(pk)
        if earlier is not None and v.prepared is not None:
            earlier = max(earlier, v.prepared)  # this version compared them at go-live, at the latest
        by_since.setdefault(v.since if earlier is None or v.since is None else min(earlier, v.since), []).append(pk)
    already = set().union(*(_entered_since(v.version.workflow_id, pks, at) for at, pks in by_since.items()))
    candidates = [Candidate(customer_id=c, trigger_key=key) for c in joined if c not in already]
    return enroll_candidates(version=v.version, candidates=candidates, now=now, routing=v.routing).enrolled


def _version_walk(v: _Live, *, key: str, now: datetime) -> int:
    """Every customer, one version, in id pages (SQLite, or rules that do not translate)."""
    from journeys.services.segments import segment_customer_ids

    enrolled, after = 0, 0
    while True:
        with transaction.atomic():
            ids = segment_customer_ids(rule=v.rule, now=now, after_id=after, limit=PAGE)
            high = ids[-1] if len(ids) == PAGE else None
            enrolled += _enter(v, set(ids), _members(v.vid, after, high), key=key, now=now)
        if high is None:
            return enrolled
        after = high


DUE_VERSION = 1  # bump when journeys.rules.sql.due works moments out differently: everyone is walked again


def _refresh_sql(*, live: list[_Live], translations: list, key: str, now: datetime) -> tuple[int, bool]:
    """PostgreSQL: the customers due (SegmentRecheck), or everyone once after the live versions
    changed, a chunk a statement: each one's answer to every live rule ('?' bits: Python tells)
    and the next moment any answer may change with time alone. Returns the runs made and
    whether every chunk was applied (a deadlocked one stays due)."""
    fingerprint = hashlib.sha256(json.dumps([DUE_VERSION, sorted(v.vid for v in live)]).encode()).hexdigest()
    known = SegmentRules.objects.filter(pk=1).values_list("fingerprint", flat=True).first()
    params: dict = {}
    for t in translations:
        params.update(t.params)
    states = ", ".join(f"CASE WHEN c.merged_into_id IS NULL THEN ({t.state}) ELSE 0 END" for t in translations)
    dues = [t.due for t in translations if t.due is not None]
    due = "NULL::timestamptz" if not dues else dues[0] if len(dues) == 1 else f"LEAST({', '.join(dues)})"
    joins = " ".join(join for t in translations for join in t.joins)
    columns = (f"c.id, r.xmin::text AS version, CASE WHEN c.merged_into_id IS NULL THEN {due} END AS due,"
               f" ARRAY[{states}] AS states, r.since, c.xmin::text AS written")
    customers, rechecks = Customer._meta.db_table, SegmentRecheck._meta.db_table
    # The refresh that last compared everyone not left uncompared since (versions live together
    # are compared together; a version just live enters nobody).
    previous = min((v.since for v in live if v.since is not None), default=None)
    enrolled, complete = 0, True

    def apply(rows: list, span: tuple[int, int | None] | None = None) -> None:
        nonlocal enrolled, complete
        done, left, applied = _rows_apply(rows, live=live, key=key, now=now, span=span)
        enrolled += done
        complete = complete and applied
        # Those a worker held, that changed meanwhile or whose chunk failed: due at the next
        # refresh, remembering when they were last compared (this holds no customer).
        rechecks_mark(SegmentRecheck, sorted(left), since=previous)

    if known == fingerprint and not any(v.baseline for v in live):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT customer_id FROM {rechecks} WHERE due_at <= %s ORDER BY customer_id", [now])
            due_ids = [pk for (pk,) in cursor.fetchall()]
        sql = (f"SELECT * FROM (SELECT {columns} FROM {rechecks} AS r JOIN {customers} AS c ON c.id = r.customer_id"
               f" {joins} WHERE r.customer_id = ANY(%(ids)s::bigint[]) OFFSET 0) AS q ORDER BY id")
        for i in range(0, len(due_ids), CHUNK):
            ids = due_ids[i:i + CHUNK]
            with connection.cursor() as cursor:
                cursor.execute(sql, {**params, "ids": "{" + ",".join(map(str, ids)) + "}"})
                rows = cursor.fetchall()
            rechecks_drop_missing(SegmentRecheck, ids, [row[0] for row in rows])
            apply(rows)
        return enrolled, complete
    # The live versions changed (or never ran here): everyone once. Marks start before the walk
    # reads anyone; a writer whose change the walk cannot see yet holds the customer, which the
    # walk then skips and marks.
    SegmentRules.objects.update_or_create(pk=1, defaults={"fingerprint": "", "walked_at": None})
    sql = (f"SELECT * FROM (SELECT {columns} FROM {customers} AS c LEFT JOIN {rechecks} AS r ON r.customer_id = c.id"
           f" {joins} WHERE c.id > %(after)s ORDER BY c.id LIMIT %(limit)s OFFSET 0) AS q ORDER BY id")
    after = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, {**params, "after": after, "limit": CHUNK})
            rows = cursor.fetchall()
        high = rows[-1][0] if len(rows) == CHUNK else None
        apply(rows, span=(after, high))
        if high is None:
            break
        after = high
    SegmentRules.objects.filter(pk=1).update(fingerprint=fingerprint, walked_at=now)
    return enrolled, complete


CHUNK = 5000  # customers compared per transaction


def _rows_apply(rows: list, *, live: list[_Live], key: str, now: datetime,
                span: tuple[int, int | None] | None = None) -> tuple[int, set[int], bool]:
    """One transaction for a chunk of (id, recheck version, next moment, [state per version],
    since, customer version): the customers are locked FOR NO KEY UPDATE SKIP LOCKED (one a
    worker or a writer holds, or that changed since the read, is left: it stays due), their
    recheck rows claimed; where the row is the one read, memberships are compared, joiners
    enrolled and the next moment written. A version just live records the members of every row
    read, left or not: that is who was in at go-live (also when the chunk fails). `span`: the
    whole id range was read (a walk), so members in it who were not read (deleted customers)
    are forgotten too. Returns the runs made, the ids left uncompared (still due), and whether
    the chunk was applied."""
    read = {row[0]: row for row in rows}
    enrolled = 0
    try:
        with transaction.atomic():
            locked = _customers_lock(sorted(read))
            current = rechecks_claim(SegmentRecheck, sorted(pk for pk, cv in locked.items() if cv == read[pk][5]))
            kept = {pk for pk, version in current.items() if version == read[pk][1]}
            since = {pk: read[pk][4] for pk in kept if read[pk][4] is not None}
            for i, v in enumerate(live):
                compared = set(read) if v.baseline else kept
                enrolled += _enter(v, _members_read(v, i, compared, read, now), _stored(v, compared, read, span),
                                   key=key, now=now, since=since)
            rechecks_write(SegmentRecheck, {pk: read[pk][2] for pk in kept})
    except OperationalError:  # a deadlock with a mark made by a transaction that does not hold the customer
        logger.exception("segment-entry refresh: a chunk of %d customers stays due", len(read))
        try:  # who was in at go-live is what was read: recorded without any lock
            with transaction.atomic():
                for i, v in enumerate(live):
                    if v.baseline:
                        _enter(v, _members_read(v, i, set(read), read, now), _stored(v, set(read), read, span),
                               key=key, now=now)
        except OperationalError:
            return 0, set(read), False
        return 0, set(read), True
    return enrolled, set(read) - kept, True


def _members_read(v: _Live, i: int, ids: set[int], read: dict, now: datetime) -> set[int]:
    """Of these customers, those the read puts in version `i`'s segment (Python where it was unsure)."""
    from journeys.services.segments import PROFILE_FIELDS, customers_matching

    members = {pk for pk in ids if read[pk][3][i] == 2}
    if unsure := [pk for pk in ids if read[pk][3][i] not in (0, 2) and read[pk][3][i] & 2]:
        customers = Customer.objects.filter(pk__in=unsure).only(*PROFILE_FIELDS)
        members |= {c.pk for c in customers_matching(rule=v.rule, now=now, customers=customers)}
    return members


def _stored(v: _Live, compared: set[int], read: dict, span: tuple[int, int | None] | None) -> set[int]:
    """The recorded members among the customers compared (and, over a walked span, those not read: gone)."""
    if span is None:
        return set(SegmentMember.objects.filter(version_id=v.vid, customer_id__in=sorted(compared))
                   .values_list("customer_id", flat=True))
    return {pk for pk in _members(v.vid, *span) if pk in compared or pk not in read}


def _customers_lock(ids: list[int]) -> dict[int, str]:
    """FOR NO KEY UPDATE in id order, skipping customers another transaction holds (a worker, a
    step, an import whose change this refresh may not see yet: they stay due): id -> the row's
    version (xmin), to tell one written since the read. It waits for no writer, and a writer
    of a customer locked here waits, then its trigger marks them."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, xmin::text FROM {Customer._meta.db_table} WHERE id = ANY(%s::bigint[])"
                       " ORDER BY id FOR NO KEY UPDATE SKIP LOCKED", ["{" + ",".join(map(str, ids)) + "}"])
        return dict(cursor.fetchall())
