"""Segment-entry triggers without an event: the hourly refresh.

An event that changes a profile fires segment entry at once (journeys.engine.processor). A
customer can also come into a segment with no event: time passes ("inactive for 30 days"),
an import or a direct update changes a trait. The refresh (hourly, with the stage refresh)
walks each live segment-entry trigger's audience through the segment service (SQL where the
rule translates) in id pages, compares each page with the members recorded last time
(`SegmentMember`, the same id range) and:

- records who joined with one INSERT ... ON CONFLICT DO NOTHING RETURNING (so only one refresh
  can count a customer as new) and enrols them set-based, trigger key `segment:<refresh>`,
  unless they already entered this workflow since the previous refresh (the event path did);
- forgets who left (they may enter again when they come back).

The first refresh after a version goes live only records the members: entry is a change, and
customers already in the segment have not entered it. Its cost is the segment's evaluation
and the changes, never one statement per customer.
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection, transaction

from journeys.choices import TriggerKind
from journeys.engine.batch import ids_in, ids_lateral
from journeys.engine.compiled import load_version
from journeys.engine.enrolment import Candidate, enroll_candidates
from journeys.models import JourneyRun, SegmentMember, TriggerState

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
        for customer_id in customer_ids:
            cursor.execute(f"INSERT INTO {table} (version_id, customer_id) VALUES (%s, %s) "
                           f"ON CONFLICT DO NOTHING RETURNING customer_id", [version_id, customer_id])
            inserted += [row[0] for row in cursor.fetchall()]
        return inserted


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
    from journeys.services.segments import segment_customer_ids

    enrolled = 0
    live = {vid for vid, _ in routed}
    for vid, routing in routed:
        version = load_version(vid)
        rule = version.trigger_config.get("rule", "")
        with transaction.atomic():
            state, _ = TriggerState.objects.select_for_update().get_or_create(version_id=vid)
            baseline, since = state.prepared_at is None, state.last_tick_at
        key = f"segment:{now.replace(second=0, microsecond=0).isoformat()}"
        after = 0
        while True:
            with transaction.atomic():
                ids = segment_customer_ids(rule=rule, now=now, after_id=after, limit=PAGE)
                high = ids[-1] if len(ids) == PAGE else None
                stored = _members(vid, after, high)
                gone = stored.difference(ids)
                if gone:
                    SegmentMember.objects.filter(version_id=vid, customer_id__in=sorted(gone)).delete()
                joined = _record(vid, [c for c in ids if c not in stored])
                if joined and not baseline:
                    already = _entered_since(version.workflow_id, joined, since)
                    candidates = [Candidate(customer_id=c, trigger_key=key) for c in joined if c not in already]
                    enrolled += enroll_candidates(version=version, candidates=candidates, now=now, routing=routing).enrolled
            if high is None:
                break
            after = high
        with transaction.atomic():
            TriggerState.objects.filter(version_id=vid).update(prepared_at=state.prepared_at or now, last_tick_at=now)
    # Versions that stopped taking entries forget their members (a later go-live starts afresh).
    stale = TriggerState.objects.filter(prepared_at__isnull=False, version__trigger_kind=TriggerKind.SEGMENT_ENTRY
                                        ).exclude(version_id__in=live).values_list("version_id", flat=True)
    for vid in list(stale):
        with transaction.atomic():
            SegmentMember.objects.filter(version_id=vid)._raw_delete(connection.alias)
            TriggerState.objects.filter(version_id=vid).update(prepared_at=None, last_tick_at=None)
    return enrolled
