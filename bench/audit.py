"""Benchmark: the daily governance audit follows its window, not the size of the history.

Four live workflows; each day RUNS_PER_DAY runs (a tenth converted) with three step executions
each (a rule, a profile update, a send with its channel in the detail), loaded with
INSERT ... SELECT FROM generate_series into a private PostgreSQL, in insertion order (older days
first, as a real install writes them). `audit_run(days=14)` is timed (best of `--rounds`) over
`--history-days` of history plus the 28 newest days (what the audit reads: 14 days of steps, 28
of runs), then again after everything older than 28 days was deleted (the same window alone).
The oldest run of all is a year-long journey that took a step today: it stays in both.
Ratio = full / window: the audit's cost must not grow with the history (target: <= 1.5).

    .venv/bin/python bench/audit.py [--runs-per-day 10000] [--history-days 337] [--rounds 3]

Last stdout line: {"bench": "audit", "ratio": ..., "window_s": ..., "full_s": ..., ...}
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import django_in_process, exit_on_sigterm, log, postgres, report  # noqa: E402

FLOW = {
    "trigger_event": "Signed Up",
    "reentry_policy": "always",
    "allow_concurrent_runs": True,
    "steps": [
        {"key": "check", "kind": "condition", "config": {"rule": "profile.plan == 'pro'"}},
        {"key": "std", "kind": "update_profile", "config": {"traits": {"segment": "standard"}}},
        {"key": "vip", "kind": "update_profile", "config": {"traits": {"segment": "vip"}}},
    ],
    "edges": [{"from": "check", "outcome": "no", "to": "std"}, {"from": "check", "outcome": "yes", "to": "vip"}],
}

# Runs of day offsets [first, last) (0 = today), RUNS_PER_DAY a day spread over the workflows.
RUNS = """
INSERT INTO journeys_journeyrun (workflow_id, version_id, customer_id, trigger_key, status, exclusive,
                                 current_step, wait_event, variables, visits, converted_at, finished_at,
                                 error, created_at, updated_at)
SELECT v.workflow_id, v.id, %(customer)s, 'b-' || d || '-' || g, 'completed', FALSE, '', '', '{}', '{}',
       CASE WHEN g %% 10 = 0 THEN t.at END, t.at, '', t.at, t.at
FROM generate_series(%(last)s - 1, %(first)s, -1) AS d, generate_series(1, %(per_day)s) AS g,
     LATERAL (SELECT now() - d * interval '1 day' + (g %% 86400) * interval '1 second' / 2 AS at) AS t,
     LATERAL (SELECT id, workflow_id FROM journeys_workflowversion WHERE id = (%(versions)s::bigint[])[1 + g %% 4]) AS v
ORDER BY d DESC, g
"""

STEPS = """
INSERT INTO journeys_stepexecution (run_id, step_key, step_kind, visit, outcome, detail, error, started_at,
                                    finished_at)
SELECT r.id, s.key, s.kind, 1, s.outcome, s.detail, CASE WHEN r.id %% 97 = 0 THEN 'boom' ELSE '' END,
       r.created_at, r.created_at + (r.id %% 50) * interval '1 millisecond'
FROM journeys_journeyrun AS r,
     (VALUES ('check', 'condition', 'no', '{}'::jsonb), ('std', 'update_profile', 'next', '{}'::jsonb),
             ('mail', 'send_message', 'next', '{"channel": "email", "status": "queued"}'::jsonb)) AS s(key, kind, outcome, detail)
WHERE r.id > %(after)s
ORDER BY r.id
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs-per-day", type=int, default=10_000)
    p.add_argument("--history-days", type=int, default=337, help="older days loaded after the first measurement")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    exit_on_sigterm()
    with postgres() as url:
        django_in_process(url)
        from django.db import connection
        from django.utils import timezone

        from journeys.models import BusinessUnit, Customer, JourneyRun, StepExecution
        from journeys.services.governance import audit_run
        from journeys.services.workflows import version_build, version_publish, workflow_create

        unit = BusinessUnit.objects.create(name="Growth", slug="growth")
        versions = []
        for i in range(4):
            workflow = workflow_create(name=f"Journey {i}", business_unit=unit)
            versions.append(version_publish(version=version_build(workflow=workflow, definition=FLOW), reason="bench").pk)
        customer = Customer.objects.create(external_id="bench").pk

        def load(first: int, last: int) -> float:
            started = time.perf_counter()
            after = JourneyRun.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
            with connection.cursor() as cursor:
                cursor.execute(RUNS, {"customer": customer, "first": first, "last": last,
                                      "per_day": args.runs_per_day, "versions": versions})
                cursor.execute(STEPS, {"after": after})
            with connection.cursor() as cursor:  # as autovacuum would have (BRIN ranges summarised)
                cursor.execute("VACUUM ANALYZE journeys_journeyrun")
                cursor.execute("VACUUM ANALYZE journeys_stepexecution")
            return time.perf_counter() - started

        def audit(at) -> tuple[float, dict]:
            times, findings = [], {}
            for _ in range(args.rounds):
                started = time.perf_counter()
                findings = audit_run(days=14, now=at).findings
                times.append(time.perf_counter() - started)
            return min(times), findings

        # Oldest first, as an install writes them (BRIN summarises block ranges in that order).
        total = 28 + args.history_days
        log(f"loading {args.history_days} days of history, {args.runs_per_day:,} runs a day")
        history_s = load(28, total)
        log(f"loaded in {history_s:.0f} s; loading the 28 newest days")
        window_s_load = load(0, 28)
        long_run = JourneyRun.objects.order_by("pk").values_list("pk", flat=True).first()
        with connection.cursor() as cursor:  # a year-long journey takes a step today
            cursor.execute("INSERT INTO journeys_stepexecution (run_id, step_key, step_kind, visit, outcome, detail,"
                           " error, started_at, finished_at) VALUES (%s, 'std', 'update_profile', 2, 'next', '{}',"
                           " '', now() - interval '1 hour', now() - interval '1 hour')", [long_run])
        runs, steps = JourneyRun.objects.count(), StepExecution.objects.count()
        at = timezone.now()  # both audits see the same window
        full_s, findings = audit(at)
        log(f"audit over {runs:,} runs / {steps:,} step executions: {full_s:.2f} s")
        with connection.cursor() as cursor:  # the same window without the history
            cutoff = at - timedelta(days=28)
            cursor.execute("DELETE FROM journeys_stepexecution WHERE run_id IN"
                           " (SELECT id FROM journeys_journeyrun WHERE created_at < %s AND id <> %s)", [cutoff, long_run])
            cursor.execute("DELETE FROM journeys_journeyrun WHERE created_at < %s AND id <> %s", [cutoff, long_run])
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE journeys_journeyrun")
            cursor.execute("VACUUM ANALYZE journeys_stepexecution")
        small_runs = JourneyRun.objects.count()
        window_s, small_findings = audit(at)
        log(f"audit over the window alone ({small_runs:,} runs): {window_s:.2f} s")
        executions = sum(s["executions"] for s in findings["step_health"])
        assert executions == sum(s["executions"] for s in small_findings["step_health"]), "the window changed"

    report(
        "audit",
        ratio=round(full_s / window_s, 2),
        window_s=round(window_s, 3),
        full_s=round(full_s, 3),
        runs=runs,
        step_executions=steps,
        window_runs=small_runs,
        executions_in_window=executions,
        load_s=round(history_s + window_s_load, 1),
        ok=full_s / window_s <= 1.5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
