"""Benchmark: an entry costs the same for a customer with a long run history as for a new one.

A live "thank you" workflow (trigger "Order Completed", re-entry always or with `--policy
cooldown` a 1-second cooldown, one open run per customer, one profile update) on a private PostgreSQL. `--buyers` frequent buyers each have
`--history` past runs in it (loaded with INSERT ... SELECT FROM generate_series); as many new
customers have none. Each round stores one "Order Completed" event per customer of a group and
processes them through `events_process` in batches of `--batch` (the event workers' task),
alternating the groups (best of `--rounds` for each). Every event enters its customer: the
groups do the same work, so ratio = frequent / new must stay near 1 (target: <= 1.5). Before the
entry checks read only the runs they need, the processor read every past run of each customer.

    .venv/bin/python bench/entry_history.py [--buyers 2000] [--history 500] [--batch 200] [--rounds 3]
                                            [--policy always|cooldown]

Last stdout line: {"bench": "entry_history", "ratio": ..., "frequent_ms_per_event": ..., ...}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import django_in_process, exit_on_sigterm, log, postgres, report  # noqa: E402

def flow(policy: str) -> dict:
    return {
        "trigger_event": "Order Completed",
        "reentry_policy": policy,
        "reentry_cooldown_s": 1 if policy == "cooldown" else 0,  # rounds are further apart: every event enters
        "allow_concurrent_runs": False,
        "steps": [{"key": "thank", "kind": "update_profile", "config": {"traits": {"thanked": True}}}],
    }

HISTORY = """
INSERT INTO journeys_journeyrun (workflow_id, version_id, customer_id, trigger_key, status, exclusive,
                                 current_step, wait_event, variables, visits, converted_at, finished_at,
                                 error, created_at, updated_at)
SELECT %(workflow)s, %(version)s, c.id, 'past-' || n, 'completed', TRUE, 'thank', '', '{}', '{}', NULL,
       now() - n * interval '1 day', '', now() - n * interval '1 day', now() - n * interval '1 day'
FROM unnest(%(customers)s::bigint[]) AS c(id), generate_series(1, %(history)s) AS n
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--buyers", type=int, default=2000)
    p.add_argument("--history", type=int, default=500, help="past runs of each frequent buyer")
    p.add_argument("--batch", type=int, default=200, help="events per events_process call")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--policy", choices=["always", "cooldown"], default="always",
                   help="re-entry policy (cooldown: 1 s, so the check reads the runs of the last second)")
    args = p.parse_args()
    exit_on_sigterm()
    with postgres() as url:
        django_in_process(url)
        from django.db import connection
        from django.utils import timezone

        from journeys.choices import EventStatus
        from journeys.engine.processor import events_process
        from journeys.models import BusinessUnit, Customer, Event, JourneyRun
        from journeys.services.sources import source_create
        from journeys.services.workflows import version_build, version_publish, workflow_create

        unit = BusinessUnit.objects.create(name="Shop", slug="shop")
        workflow = workflow_create(name="Thank you", business_unit=unit)
        version = version_publish(version=version_build(workflow=workflow, definition=flow(args.policy)), reason="bench")
        source = source_create(name="shop")[0]
        groups = {}
        for group in ("frequent", "new"):
            groups[group] = [c.pk for c in Customer.objects.bulk_create(
                Customer(external_id=f"{group}-{i}", traits={}) for i in range(args.buyers))]
        log(f"loading {args.history} past runs for each of {args.buyers:,} frequent buyers")
        with connection.cursor() as cursor:
            cursor.execute(HISTORY, {"workflow": workflow.pk, "version": version.pk, "customers": groups["frequent"],
                                     "history": args.history})
            cursor.execute("VACUUM ANALYZE journeys_journeyrun")
        past = JourneyRun.objects.count()

        def round_of(group: str) -> float:
            time.sleep(1.1)  # past the 1-second cooldown of the previous round
            now = timezone.now()
            events = Event.objects.bulk_create(
                Event(source=source, customer_id=c, name="Order Completed", type="track", timestamp=now,
                      received_at=now, status=EventStatus.PENDING, properties={"total": 10}) for c in groups[group])
            ids = [e.pk for e in events]
            started = time.perf_counter()
            for i in range(0, len(ids), args.batch):
                assert events_process(event_ids=ids[i : i + args.batch]) == len(ids[i : i + args.batch])
            return time.perf_counter() - started

        times: dict[str, list[float]] = {"frequent": [], "new": []}
        for n in range(args.rounds):
            for group in ("new", "frequent") if n % 2 else ("frequent", "new"):
                times[group].append(round_of(group))
                log(f"round {n + 1} {group}: {times[group][-1]:.2f} s")
        entered = JourneyRun.objects.count() - past
        assert entered == 2 * args.buyers * args.rounds, f"{entered} entries, expected {2 * args.buyers * args.rounds}"

    frequent, new = min(times["frequent"]), min(times["new"])
    report(
        "entry_history",
        ratio=round(frequent / new, 2),
        frequent_ms_per_event=round(1000 * frequent / args.buyers, 3),
        new_ms_per_event=round(1000 * new / args.buyers, 3),
        past_runs=past,
        history_per_buyer=args.history,
        policy=args.policy,
        events_per_round=args.buyers,
        ok=frequent / new <= 1.5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
