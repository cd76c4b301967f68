"""Benchmark: the ops dashboard and a version's graph page cost the same after months of history.

Four live workflows on a private PostgreSQL, each with `--open` open runs (waiting at a delay)
and `--recent` runs finished in the last days (one step execution and one message each): the
baseline. Then `--history` more finished runs (one step execution and one message each), started
10 to 100 days ago, are loaded with INSERT ... SELECT FROM generate_series and the same reads are
timed again (best of `--rounds`): `dashboard_summary` (what /console/dashboard.json serialises)
and `version_graph` + `workflow_messages_for` (the graph page's reads). Before the open-runs index
and the graph's window, both read every run ever made (a soak measured 63 ms -> 1.4 s for the
dashboard and 60 ms -> 1 s for the graph at 420k runs). ratio = with history / without: ~1
(target <= 1.5). Also checks that PostgreSQL counts the open runs from an index, not a seq scan.

    .venv/bin/python bench/history_pages.py [--history 400000] [--open 500] [--recent 2500] [--rounds 5]

Last stdout line: {"bench": "history_pages", "dashboard_ratio": ..., "graph_ratio": ..., ...}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import django_in_process, exit_on_sigterm, log, postgres, report  # noqa: E402

FLOW = {
    "trigger_event": "Signed Up",
    "reentry_policy": "always",
    "allow_concurrent_runs": True,
    "steps": [{"key": "wait", "kind": "delay", "config": {"duration": "2d"}},
              {"key": "tag", "kind": "update_profile", "config": {"traits": {"welcomed": True}}}],
    "edges": [{"from": "wait", "outcome": "next", "to": "tag"}],
}

# Runs of one version for `customers`, `n` each, created `days_from`..`days_to` days ago.
RUNS = """
INSERT INTO journeys_journeyrun (workflow_id, version_id, customer_id, trigger_key, status, exclusive,
                                 current_step, next_wake_at, wait_event, variables, visits, converted_at,
                                 finished_at, error, created_at, updated_at)
SELECT %(workflow)s, %(version)s, c.id, %(prefix)s || n, %(status)s, FALSE, %(step)s,
       CASE WHEN %(status)s = 'waiting' THEN now() + interval '2 days' END, '', '{}', '{}', NULL,
       CASE WHEN %(status)s = 'waiting' THEN NULL ELSE t END, '', t, t
FROM unnest(%(customers)s::bigint[]) AS c(id), generate_series(1, %(n)s) AS n,
     LATERAL (SELECT now() - (%(days_from)s + random() * (%(days_to)s - %(days_from)s)) * interval '1 day' AS t) AS at
"""
EXECUTIONS = """
INSERT INTO journeys_stepexecution (run_id, step_key, step_kind, visit, outcome, detail, error, started_at, finished_at)
SELECT id, 'tag', 'update_profile', 1, 'next', '{}', '', created_at, created_at
FROM journeys_journeyrun WHERE trigger_key LIKE %(prefix)s || '%%' AND status <> 'waiting'
"""
MESSAGES = """
INSERT INTO channels_app_delivery (idempotency_key, customer_id, channel_id, transactional, locale, run_id, step_key,
                                   "to", subject, body, html_body, content_hash, policy, notes, choice_reason, status,
                                   reason, error, attempts, provider_message_id, created_at, updated_at, sent_at)
SELECT 'bench:' || id, customer_id, %(channel)s, FALSE, '', id, 'tag', 'x@example.com', 'hi', 'hello', '', '', '{}',
       '{}', '', 'sent', '', '', 1, '', created_at, created_at, created_at
FROM journeys_journeyrun WHERE trigger_key LIKE %(prefix)s || '%%' AND status <> 'waiting'
"""


def slowest(read, n: int = 3) -> str:
    """The `n` slowest SQL statements of one call of `read`, with their times (to find a regression)."""
    from django.db import connection

    seen = []

    def wrapper(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            seen.append((time.perf_counter() - started, sql))

    with connection.execute_wrapper(wrapper):
        read()
    return "\n".join(f"  {1000 * t:.1f} ms {sql[:300]}" for t, sql in sorted(seen, reverse=True)[:n])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--history", type=int, default=400_000, help="finished runs added, over the four workflows")
    p.add_argument("--open", type=int, default=500, help="open runs per workflow")
    p.add_argument("--recent", type=int, default=2500, help="runs finished lately, per workflow")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    exit_on_sigterm()
    with postgres() as url:
        django_in_process(url)
        from django.contrib.auth import get_user_model
        from django.db import connection

        from channels_app.models import Channel
        from journeys.console.graph import version_graph
        from journeys.console.selectors import dashboard_summary, open_runs_by_workflow, workflow_messages_for
        from journeys.models import BusinessUnit, Customer, JourneyRun
        from journeys.services.workflows import version_build, version_publish, workflow_create

        user = get_user_model().objects.create_superuser("bench", "bench@example.com", "x")
        unit = BusinessUnit.objects.create(name="Shop", slug="shop")
        channel = Channel.objects.create(name="bench-email", kind="email")
        versions = []
        for i in range(4):
            workflow = workflow_create(name=f"Welcome {i}", business_unit=unit)
            versions.append(version_publish(version=version_build(workflow=workflow, definition=FLOW), reason="bench"))
        customers = [c.pk for c in Customer.objects.bulk_create(
            Customer(external_id=f"c-{i}", traits={}) for i in range(max(args.open, 500)))]

        def load(prefix: str, *, status: str, per_workflow: int, days: tuple[float, float]) -> None:
            per_customer = max(1, per_workflow // len(customers))
            with connection.cursor() as cursor:
                for version in versions:
                    cursor.execute(RUNS, {"workflow": version.workflow_id, "version": version.pk, "prefix": prefix,
                                          "status": status, "step": "wait" if status == "waiting" else "tag",
                                          "customers": customers[: per_workflow // per_customer], "n": per_customer,
                                          "days_from": days[0], "days_to": days[1]})
                cursor.execute(EXECUTIONS, {"prefix": prefix})
                cursor.execute(MESSAGES, {"prefix": prefix, "channel": channel.pk})
                cursor.execute("VACUUM ANALYZE journeys_journeyrun")
                cursor.execute("VACUUM ANALYZE journeys_stepexecution")
                cursor.execute("VACUUM ANALYZE channels_app_delivery")

        def timed(read) -> float:
            best = float("inf")
            for _ in range(args.rounds):
                started = time.perf_counter()
                read()
                best = min(best, time.perf_counter() - started)
            return best

        def graph_page() -> None:
            version_graph(version=versions[0])
            workflow_messages_for(version=versions[0])

        log(f"baseline: {args.open} open and {args.recent} recent finished runs per workflow")
        load("open-", status="waiting", per_workflow=args.open, days=(0, 0.5))
        load("recent-", status="completed", per_workflow=args.recent, days=(0, 3))
        dashboard_0, graph_0 = timed(lambda: dashboard_summary(user=user)), timed(graph_page)
        log(f"dashboard {1000 * dashboard_0:.1f} ms, graph {1000 * graph_0:.1f} ms")

        log(f"loading {args.history:,} finished runs started 10-100 days ago")
        load("old-", status="completed", per_workflow=args.history // 4, days=(10, 100))
        dashboard_1, graph_1 = timed(lambda: dashboard_summary(user=user)), timed(graph_page)
        log(f"dashboard {1000 * dashboard_1:.1f} ms, graph {1000 * graph_1:.1f} ms")

        for name, read in (("dashboard", lambda: dashboard_summary(user=user)), ("graph", graph_page)):
            log(f"slowest statements of the {name}:\n" + slowest(read))

        counts = open_runs_by_workflow(workflow_ids=[v.workflow_id for v in versions])
        assert sum(counts.values()) == 4 * args.open, counts
        with connection.cursor() as cursor:
            sql, params = (JourneyRun.objects.filter(workflow_id__in=[v.workflow_id for v in versions], status__in=["active", "waiting"])
                           .values_list("workflow_id", "status").order_by().query.sql_with_params())
            cursor.execute(f"EXPLAIN SELECT workflow_id, status, count(*) FROM ({sql}) s GROUP BY 1, 2", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        log("open runs plan:\n" + plan)
        seq_scan = "Seq Scan on journeys_journeyrun" in plan

    dashboard_ratio, graph_ratio = dashboard_1 / dashboard_0, graph_1 / graph_0
    report(
        "history_pages",
        dashboard_ratio=round(dashboard_ratio, 2),
        graph_ratio=round(graph_ratio, 2),
        dashboard_ms=[round(1000 * dashboard_0, 1), round(1000 * dashboard_1, 1)],
        graph_ms=[round(1000 * graph_0, 1), round(1000 * graph_1, 1)],
        finished_runs_added=args.history,
        open_runs_seq_scan=seq_scan,
        ok=dashboard_ratio <= 1.5 and graph_ratio <= 1.5 and not seq_scan,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
