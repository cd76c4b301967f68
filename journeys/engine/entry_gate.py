"""Re-entry limits enforced by the database: runs are inserted with ON CONFLICT DO NOTHING
(the same trigger again, a second open run) and each entry upserts its (workflow, customer)
EntryGate row in the enrolling transaction, so two concurrent enrolments of the same customer
cannot both pass a `once` or `cooldown` limit. Used by every enrolment path: one run
(journeys.engine.runner), the event batch (processor) and bulk enrolment (enrolment); it sits
below them all so none of them import each other for it."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from django.db import connection

from journeys.choices import ReentryPolicy
from journeys.engine.batch import ids_q, objects_insert
from journeys.engine.compiled import CompiledVersion
from journeys.models import JourneyRun


def runs_insert(*, runs: list[JourneyRun], versions: dict[int, CompiledVersion], now: datetime) -> list[JourneyRun]:
    """Insert new runs; returns those that were inserted and admitted, with their ids.

    Rows in (workflow, customer) order, so two enrolments of overlapping audiences take the
    unique-index locks in the same order. A run that hits a unique constraint (the same trigger
    again, a second open run) is not inserted; then `entries_admit` applies the re-entry limit
    and the refused runs are deleted again (nothing has run yet: no step, no message)."""
    if not runs:
        return []
    runs = sorted(runs, key=lambda r: (r.workflow_id, r.customer_id, r.trigger_key))
    rows = objects_insert(JourneyRun, runs, ignore_conflicts=True, returning=["id", "workflow_id", "customer_id", "trigger_key"])
    ids = {(w, c, k): pk for pk, w, c, k in rows}
    inserted = []
    for run in runs:
        pk = ids.get((run.workflow_id, run.customer_id, run.trigger_key))
        if pk is not None:
            run.pk = pk
            run._state.adding, run._state.db = False, connection.alias
            inserted.append(run)
    refused = entries_admit(runs=inserted, versions=versions, now=now)
    if refused:
        JourneyRun.objects.filter(ids_q("pk", sorted(refused)))._raw_delete(connection.alias)
        inserted = [r for r in inserted if r.pk not in refused]
    return inserted


_GATE_INSERT = "INSERT INTO journeys_entrygate (workflow_id, customer_id, entered_at) VALUES {values} "
_GATE_SELECT = ("INSERT INTO journeys_entrygate (workflow_id, customer_id, entered_at) "
                "SELECT %s, c, %s FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(c, n) ORDER BY n ")
_GATE_ONCE = "ON CONFLICT (workflow_id, customer_id) DO NOTHING RETURNING customer_id"
_GATE_COOLDOWN = ("ON CONFLICT (workflow_id, customer_id) DO UPDATE SET entered_at = excluded.entered_at "
                  "WHERE journeys_entrygate.entered_at <= %s RETURNING customer_id")


def entries_admit(*, runs: list[JourneyRun], versions: dict[int, CompiledVersion], now: datetime) -> set[int]:
    """Apply the re-entry limits of these just-inserted runs in the database; returns the ids
    of the runs refused. `once`: the first entry inserts the (workflow, customer) gate row and
    any later one finds it. `cooldown`: the gate row's time moves only if the last entry is at
    least the cooldown ago. Both are single upserts: a concurrent enrolment of the same customer
    waits for this transaction and then sees its row. `always` has no limit to enforce."""
    groups: dict[tuple, list[JourneyRun]] = defaultdict(list)
    for run in runs:
        version = versions[run.version_id]
        if version.reentry_policy == ReentryPolicy.ONCE:
            groups[(_GATE_ONCE, None)].append(run)
        elif version.reentry_policy == ReentryPolicy.COOLDOWN:
            groups[(_GATE_COOLDOWN, now - timedelta(seconds=version.reentry_cooldown_s))].append(run)
    refused: set[int] = set()
    for (conflict, threshold), members in groups.items():
        members.sort(key=lambda r: (r.workflow_id, r.customer_id))
        admitted: set[tuple[int, int]] = set()
        by_workflow: dict[int, list[JourneyRun]] = defaultdict(list)
        for run in members:
            by_workflow[run.workflow_id].append(run)
        with connection.cursor() as cursor:
            for workflow_id, group in by_workflow.items():
                seen = {}
                for run in group:  # one gate row per customer and statement (allow_concurrent_runs: several runs)
                    seen.setdefault(run.customer_id, run)
                customers = list(seen)
                extra = [threshold] if threshold is not None else []
                if connection.vendor == "postgresql":  # one array parameter, not thousands of placeholders
                    cursor.execute(_GATE_SELECT + conflict, [workflow_id, now, customers, *extra])
                    admitted.update((workflow_id, row[0]) for row in cursor.fetchall())
                else:
                    for i in range(0, len(customers), 300):
                        chunk = customers[i : i + 300]
                        params: list = []
                        for customer_id in chunk:
                            params += [workflow_id, customer_id, now]
                        sql = _GATE_INSERT.format(values=", ".join(["(%s, %s, %s)"] * len(chunk))) + conflict
                        cursor.execute(sql, params + extra)
                        admitted.update((workflow_id, row[0]) for row in cursor.fetchall())
                # Several runs of one customer in one statement (concurrent runs allowed): the first is the entry.
                for run in group:
                    if (workflow_id, run.customer_id) not in admitted or seen[run.customer_id] is not run:
                        refused.add(run.pk)
    return refused
