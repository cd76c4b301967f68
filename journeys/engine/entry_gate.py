"""Re-entry limits enforced by the database: runs are inserted with ON CONFLICT DO NOTHING
(the same trigger again, a second open run) and each entry upserts its (workflow, customer)
EntryGate row in the enrolling transaction, so two concurrent enrolments of the same customer
cannot both pass a `once` or `cooldown` limit. Used by every enrolment path: one run
(journeys.engine.runner), the event batch (processor) and bulk enrolment (enrolment); it sits
below them all so none of them import each other for it. `entry_history` reads, for all of them,
the few past runs the entry checks look at (never a customer's whole history)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Q

from journeys.choices import OPEN_RUN_STATUSES, ReentryPolicy
from journeys.engine.batch import ids_lateral, ids_q, objects_insert
from journeys.engine.compiled import CompiledVersion
from journeys.models import JourneyRun


def entry_history(*, version: CompiledVersion, wanted: list[tuple[int, str | None]], now: datetime) -> dict[int, list[tuple]]:
    """(trigger key, status, created) of the runs in the version's workflow that the entry checks
    need for these (customer id, trigger key) pairs, one query: the run of the same trigger
    (idempotency; a None key asks for none), open runs (unless concurrent runs are allowed), one
    run of each customer (re-entry once) and the runs within the cooldown. Never every run a
    customer ever had (a daily broadcast, a frequent buyer's thank-you journey: hundreds each),
    so an entry costs the same on the thousandth visit as on the first. A run may be listed twice."""
    ids = sorted({customer_id for customer_id, _ in wanted})
    pairs = sorted({(customer_id, key) for customer_id, key in wanted if key is not None})
    policy = version.reentry_policy
    since = now - timedelta(seconds=version.reentry_cooldown_s or 0)
    history: dict[int, list[tuple]] = defaultdict(list)
    if not ids:
        return history
    if connection.vendor != "postgresql":
        if policy == ReentryPolicy.ONCE:  # any run refuses (SQLite is not the scale path)
            wanted_runs = Q()
        else:  # another customer's trigger key may bring a run more: it changes no check
            wanted_runs = Q(trigger_key__in={key for _, key in pairs})
            if not version.allow_concurrent_runs:
                wanted_runs |= Q(status__in=OPEN_RUN_STATUSES)
            if policy == ReentryPolicy.COOLDOWN:
                wanted_runs |= Q(created_at__gte=since)
        rows = JourneyRun.objects.filter(wanted_runs, workflow_id=version.workflow_id, customer_id__in=ids)
        for customer_id, key, status, created in rows.values_list("customer_id", "trigger_key", "status", "created_at"):
            history[customer_id].append((key, status, created))
        return history
    # PostgreSQL: the ids (and keys) as array parameters; per id, each part through an index
    # (run_trigger_unique; run_customer_status_idx for the open runs).
    table = JourneyRun._meta.db_table
    runs = f"SELECT trigger_key, status, created_at FROM {table} WHERE customer_id = ids.id AND workflow_id = %s"
    same_trigger = (
        f"SELECT p.id, hit.trigger_key, hit.status, hit.created_at FROM unnest(%s::bigint[], %s::text[]) AS p(id, k) "
        f"CROSS JOIN LATERAL (SELECT trigger_key, status, created_at FROM {table} WHERE customer_id = p.id "
        "AND workflow_id = %s AND trigger_key = p.k OFFSET 0) AS hit"
    )
    statements = [same_trigger]
    params: list = [[c for c, _ in pairs], [k for _, k in pairs], version.workflow_id]
    parts, part_params = [], []
    if not version.allow_concurrent_runs:
        parts.append(f"{runs} AND status = ANY(%s::text[])")
        part_params += [version.workflow_id, [status.value for status in OPEN_RUN_STATUSES]]
    if policy == ReentryPolicy.ONCE:
        parts.append(f"{runs} LIMIT 1")
        part_params += [version.workflow_id]
    elif policy == ReentryPolicy.COOLDOWN:
        parts.append(f"{runs} AND created_at >= %s")
        part_params += [version.workflow_id, since]
    if parts:
        source, ids_param = ids_lateral(ids, " UNION ALL ".join(f"({part})" for part in parts))
        statements.append(f"SELECT ids.id, hit.trigger_key, hit.status, hit.created_at FROM {source}")
        params += [*ids_param, *part_params]
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(statements), params)
        for customer_id, key, status, created in cursor.fetchall():
            history[customer_id].append((key, status, created))
    return history


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
