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
from journeys.engine.batch import ids_q, objects_insert
from journeys.engine.compiled import CompiledVersion
from journeys.models import JourneyRun


def entry_history(*, wanted: list[tuple[CompiledVersion, int, str | None]], now: datetime) -> dict[tuple[int, int], list[tuple]]:
    """(workflow id, customer id) -> (trigger key, status, created) of the runs the entry checks
    need for these (version, customer id, trigger key) entries, in one query whatever the number
    of versions: the run of the same trigger (idempotency; a None key asks for none), open runs
    (unless the version allows concurrent runs), one run (re-entry once), the runs within the
    cooldown. Never every run a customer ever had (a daily broadcast, a frequent buyer's thank-you
    journey: hundreds each). A run may be listed twice; every run listed is the customer's in
    that workflow, so a superset changes no check (`runner.entry_refusal` applies each version's
    own policy and cooldown)."""
    keyed, open_runs, once, cooldown = set(), set(), set(), {}
    for version, customer_id, key in wanted:
        pair = (version.workflow_id, customer_id)
        if key is not None:
            keyed.add((*pair, key))
        if not version.allow_concurrent_runs:
            open_runs.add(pair)
        if version.reentry_policy == ReentryPolicy.ONCE:
            once.add(pair)
        elif version.reentry_policy == ReentryPolicy.COOLDOWN:
            since = now - timedelta(seconds=version.reentry_cooldown_s or 0)
            cooldown[pair] = min(since, cooldown.get(pair, since))  # two versions of a workflow: the longer
    history: dict[tuple[int, int], list[tuple]] = defaultdict(list)
    if connection.vendor != "postgresql":
        return _entry_history_orm(keyed, open_runs, once, cooldown, history)
    # PostgreSQL: each part one LATERAL probe per (workflow, customer) from array parameters, through
    # an index (run_trigger_unique; run_customer_status_idx for the open runs).
    statements, params = [], []

    def part(pairs: str, condition: str, values: list) -> None:
        statements.append(
            f"SELECT p.w, p.c, hit.trigger_key, hit.status, hit.created_at FROM {pairs} "
            f"CROSS JOIN LATERAL (SELECT trigger_key, status, created_at FROM {JourneyRun._meta.db_table} "
            f"WHERE workflow_id = p.w AND customer_id = p.c{condition} OFFSET 0) AS hit")
        params.extend(values)

    if keyed:
        part("unnest(%s::bigint[], %s::bigint[], %s::text[]) AS p(w, c, k)", " AND trigger_key = p.k",
             [list(column) for column in zip(*sorted(keyed))])
    if open_runs:
        part("unnest(%s::bigint[], %s::bigint[]) AS p(w, c)", " AND status = ANY(%s::text[])",
             [*(list(column) for column in zip(*sorted(open_runs))), [status.value for status in OPEN_RUN_STATUSES]])
    if once:
        part("unnest(%s::bigint[], %s::bigint[]) AS p(w, c)", " LIMIT 1", [list(column) for column in zip(*sorted(once))])
    if cooldown:
        rows = sorted((w, c, since) for (w, c), since in cooldown.items())
        part("unnest(%s::bigint[], %s::bigint[], %s::timestamptz[]) AS p(w, c, since)", " AND created_at >= p.since",
             [list(column) for column in zip(*rows)])
    if statements:
        # The cooldown part is estimated at a customer's average number of runs a probe: with a few
        # hundred, the estimate passes jit_above_cost and compiling would cost ~13 ms a statement,
        # more than the statement itself (a few index pages a customer: customer index AND BRIN).
        no_jit = bool(cooldown) and connection.in_atomic_block
        with connection.cursor() as cursor:
            if no_jit:
                cursor.execute("SET LOCAL jit = off")
            cursor.execute(" UNION ALL ".join(statements), params)
            for workflow_id, customer_id, key, status, created in cursor.fetchall():
                history[(workflow_id, customer_id)].append((key, status, created))
            if no_jit:
                cursor.execute("SET LOCAL jit TO DEFAULT")
    return history


def _entry_history_orm(keyed: set, open_runs: set, once: set, cooldown: dict, history: dict) -> dict:
    """The same on other databases (SQLite is not the scale path), as one query that may read a
    few runs more (another customer's trigger key, the longest cooldown): every run it lists is
    the customer's in that workflow, so no check changes. With `once`, every run of the pairs."""
    pairs = {(w, c) for w, c, _ in keyed} | open_runs | once | set(cooldown)
    if not pairs:
        return history
    rows = JourneyRun.objects.filter(workflow_id__in={w for w, _ in pairs}, customer_id__in={c for _, c in pairs})
    if not once:
        wanted_runs = Q(trigger_key__in={k for _, _, k in keyed}) | Q(status__in=OPEN_RUN_STATUSES)
        if cooldown:
            wanted_runs |= Q(created_at__gte=min(cooldown.values()))
        rows = rows.filter(wanted_runs)
    for w, c, key, status, created in rows.values_list("workflow_id", "customer_id", "trigger_key", "status",
                                                       "created_at"):
        if (w, c) in pairs:
            history[(w, c)].append((key, status, created))
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
