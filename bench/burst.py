"""A burst of events: all processed, worker memory bounded.

    .venv/bin/python bench/burst.py [--events 50000] [--q-workers 2] [--clients 4] [--timeout 1800]

A private PostgreSQL, gunicorn (2 workers) and one `manage.py qcluster` (ORM broker,
Q_WORKERS workers, production settings) run as separate processes. One live workflow
(condition -> update_profile -> goal) is triggered by `Order Completed`, about 7% of
the events. N events (bench/ingest.py's Segment mix over 5,000 users) are POSTed to
/v1/batch as fast as the clients go, while the cluster works: a burst, far above what the
workers drain, so the queue grows to its largest while the events arrive.

Checks (exit 1 when one fails): every event is processed (none failed, none pending),
every Order Completed has its run with 3 steps, and memory is bounded: the cluster's peak
resident memory over the whole burst stays within 1.3x of its peak while the first 10% of
the events were processed (the baseline, measured in the same run), and no process passes
400 MB. Anything kept per event or per task would grow with N and fail the ratio.

Last stdout line: {"bench": "burst", "events": N, "processed_per_s": ..., "rss_ratio": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, ROOT, exit_on_sigterm, loadavg, log, qcluster, report, stack, tree_cpu, tree_rss  # noqa: E402
from ingest import make_batches, send_all, warm_up  # noqa: E402

MB = 1024 * 1024
SEED_WORKFLOW = """
from journeys.models import BusinessUnit
from journeys.services.workflows import version_build, version_publish, workflow_create
unit = BusinessUnit.objects.create(name="Burst", slug="burst")
flow = {
    "trigger_event": "Order Completed", "reentry_policy": "always", "allow_concurrent_runs": True,
    "steps": [
        {"key": "check", "kind": "condition", "config": {"rule": "event.properties.price >= 0"}},
        {"key": "note", "kind": "update_profile", "config": {"variables": {"p": {"rule": "event.properties.price"}}}},
        {"key": "done", "kind": "goal", "config": {"name": "ordered"}},
    ],
    "edges": [{"from": "check", "outcome": "yes", "to": "note"}, {"from": "note", "outcome": "next", "to": "done"}],
}
version_publish(version=version_build(workflow=workflow_create(name="burst", business_unit=unit), definition=flow),
                reason="bench")
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--q-workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds to wait for the drain")
    args = parser.parse_args()
    exit_on_sigterm()
    bodies = [json.dumps(b, separators=(",", ":")).encode()
              for b in make_batches(events=args.events, batch=250, users=5000, seed=7)]
    load0 = loadavg()

    with stack(workers=2) as s:
        subprocess.run([str(PYTHON), "manage.py", "shell", "-c", SEED_WORKFLOW], env=s.env, cwd=ROOT, check=True,
                       stdout=sys.stderr)
        warm_up(s.port, 2)
        with s.connect(autocommit=True) as conn, qcluster(s.env, q_workers=args.q_workers, name="burst") as cluster:
            def processed() -> int:
                return conn.execute("SELECT count(*) FROM journeys_event WHERE status = 'processed'"
                                    " AND source_id = %s", [s.source_id]).fetchone()[0]

            time.sleep(3)  # the cluster is up (idle) before the burst
            idle_rss = tree_rss(cluster.pid)[0]
            cpu0 = tree_cpu(cluster.pid)
            samples: list[tuple[float, int, int, int]] = []  # (t, processed, rss sum, largest process)
            began = time.monotonic()
            result: dict = {}
            sender = threading.Thread(target=lambda: result.update(send_all(
                port=s.port, write_key=s.write_key, bodies=bodies, clients=args.clients, gzipped=False)), daemon=True)
            sender.start()
            deadline = began + args.timeout
            while True:
                done = processed()
                total, largest = tree_rss(cluster.pid)
                samples.append((time.monotonic() - began, done, total, largest))
                if done >= args.events or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            drained_s = time.monotonic() - began
            sender.join(60)
            cpu = tree_cpu(cluster.pid) - cpu0
            ingested_s = result.get("elapsed", float("nan"))
            states = dict(conn.execute("SELECT status, count(*) FROM journeys_event WHERE source_id = %s"
                                       " GROUP BY status", [s.source_id]).fetchall())
            orders = conn.execute("SELECT count(*) FROM journeys_event WHERE source_id = %s"
                                  " AND name = 'Order Completed'", [s.source_id]).fetchone()[0]
            runs = conn.execute("SELECT count(*) FROM journeys_journeyrun WHERE status = 'completed'").fetchone()[0]
            steps = conn.execute("SELECT count(*), count(DISTINCT (run_id, step_key, visit))"
                                 " FROM journeys_stepexecution").fetchone()

    tenth = [x for x in samples if x[1] <= args.events // 10]
    base_peak = max(x[2] for x in tenth) if tenth else samples[0][2]
    peak = max(x[2] for x in samples)
    largest = max(x[3] for x in samples)
    ratio = peak / base_peak
    problems = list(result.get("failures", []))[:5]
    if states.get("processed", 0) != args.events:
        problems.append(f"processed {states.get('processed', 0)} of {args.events} ({states})")
    if runs != orders or steps[0] != steps[1] or steps[0] != 3 * orders:
        problems.append(f"{orders} orders but {runs} completed runs, {steps[0]} steps ({steps[1]} distinct)")
    if ratio > 1.3:
        problems.append(f"cluster memory grew with the burst: {base_peak / MB:.0f} MB -> {peak / MB:.0f} MB")
    if largest > 400 * MB:
        problems.append(f"a cluster process reached {largest / MB:.0f} MB")
    for problem in problems:
        log(f"FAIL {problem}")
    log(f"ingested in {ingested_s:.1f} s, all processed after {drained_s:.1f} s; cluster RSS idle "
        f"{idle_rss / MB:.0f} MB, peak in the first 10% {base_peak / MB:.0f} MB, peak {peak / MB:.0f} MB "
        f"(largest process {largest / MB:.0f} MB); load {load0} -> {loadavg()}")
    report(
        "burst",
        events=args.events,
        processed_per_s=round(args.events / drained_s),
        rss_ratio=round(ratio, 3),
        peak_rss_mb=round(peak / MB),
        ingest_per_s=round(args.events / ingested_s) if ingested_s == ingested_s else None,
        worker_cpu_us=round(cpu * 1e6 / args.events),
        baseline_rss_mb=round(base_peak / MB),
        idle_rss_mb=round(idle_rss / MB),
        largest_process_mb=round(largest / MB),
        drained_s=round(drained_s, 1),
        q_workers=args.q_workers,
        loadavg=load0,
        ok=not problems,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
