"""Scale-out of the engine workers on one PostgreSQL: events/s and CPU per event for
several worker layouts (qcluster processes x Q_WORKERS), same database, same workload.

    .venv/bin/python bench/engine_scale.py [--backlog 3000] [--layouts 1x1,2x1,1x2,2x2] [--workflows 10]

Reuses bench/engine.py (workload, cluster, measuring) and bench/common.py (PostgreSQL,
gunicorn, CPU accounting). For each layout: a backlog of test events is stored with no
worker running, then `manage.py qcluster` processes start and drain it.
events/s = backlog / (first event picked up -> last action recorded); CPU per event =
gunicorn + qcluster trees + PostgreSQL over the drain. The first layout is the baseline:
speedup = events/s of a layout / events/s of the first one.

Last stdout line: {"bench": "engine_scale", "layouts": {...}, "speedup": {...}, ...}
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import exit_on_sigterm, log, postmaster_pid, report, stack  # noqa: E402
from engine import (  # noqa: E402
    Cluster,
    Sender,
    action_times,
    bodies_for,
    cluster,
    cpu_snapshot,
    delta,
    identify_events,
    run_seed,
    track_events,
    wait_drained,
)


def drain(s, postmaster: int, conn, *, tag: str, processes: int, q_workers: int, args) -> dict:
    sender = Sender(s.port, s.write_key)
    sender.post_all(bodies_for(track_events(tag, args.users, args.backlog), 250))
    c = Cluster(s.env, processes=processes, q_workers=q_workers)
    cpu0 = cpu_snapshot(s, c, postmaster)
    load0 = os.getloadavg()[0]
    c.start()
    try:
        wall = wait_drained(conn, timeout_s=args.timeout, what=f"{processes}x{q_workers}")
        cpu = delta(cpu_snapshot(s, c, postmaster), cpu0)
    finally:
        c.stop()
    rows = action_times(conn, f"{tag}-tr-")
    first = min(r[2] for r in rows if r[2] is not None)
    last = max(r[3] for r in rows if r[3] is not None)
    n = len(rows)
    return {
        "events": n,
        "events_per_s": round(n / (last - first), 1),
        "drain_wall_s": round(wall, 1),
        "cpu_us": {k: round(v * 1e6 / n) for k, v in zip(("server", "workers", "db"), cpu)},
        "cpu_us_total": round(sum(cpu) * 1e6 / n),
        "loadavg": round(load0, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backlog", type=int, default=3000)
    p.add_argument("--layouts", default="1x1,2x1,1x2,2x2", help="PROCESSESxQ_WORKERS, comma-separated")
    p.add_argument("--workflows", type=int, default=10)
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    exit_on_sigterm()
    layouts = [tuple(int(x) for x in item.split("x")) for item in args.layouts.split(",")]
    machine = {"nproc": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    log(f"machine: {machine}")
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with stack(workers=2) as s:
        with s.connect() as conn:
            postmaster = postmaster_pid(conn)
        log(f"seed: {run_seed(s.env, args.workflows, 300)}")
        with s.connect(autocommit=True) as conn:
            with cluster(s.env, processes=1, q_workers=2):
                Sender(s.port, s.write_key).post_all(bodies_for(identify_events("s0", args.users, False), 250))
                wait_drained(conn, timeout_s=300, what="identify")
            for i, (processes, q_workers) in enumerate(layouts):
                # the tag's first two characters name the (identified) users: "s0"
                r = drain(s, postmaster, conn, tag=f"s0{i}", processes=processes, q_workers=q_workers, args=args)
                results[f"{processes}x{q_workers}"] = r
                log(f"{processes} qcluster x Q_WORKERS={q_workers}: {r}")
    base = next(iter(results.values()))
    report(
        "engine_scale",
        layouts=results,
        speedup={k: round(v["events_per_s"] / base["events_per_s"], 2) for k, v in results.items()},
        cpu_ratio={k: round(v["cpu_us_total"] / base["cpu_us_total"], 2) for k, v in results.items()},
        backlog=args.backlog,
        workflows=args.workflows,
        machine={**machine, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        runtime_s=round(time.perf_counter() - started, 1),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
