"""Scale-out of the web tier on one PostgreSQL: ingest events/s with 1 vs 2 web processes.

    .venv/bin/python bench/ingest_scale.py [--events 12000] [--layouts 1,2,2,1] [--clients-per-web 2]

Each layout runs N gunicorn processes (one sync worker each, on their own ports, as N
machines behind a load balancer would) against one PostgreSQL, and sends the same
workload (bench/ingest.py's Segment mix, 250 events a request, fresh messageIds per
phase) split evenly across them. The phases run in the order given (default ABBA:
1, 2, 2, 1) so that a drift in the machine's load hits both sides alike. The baseline is
the 1-process layout of the same run: speedup = events/s with 2 / events/s with 1 (mean
of the phases). CPU per event = all gunicorn trees + all PostgreSQL processes.

Last stdout line: {"bench": "ingest_scale", "speedup_2_vs_1": ..., "events_per_s_1": ..., ...}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    exit_on_sigterm,
    gunicorn,
    loadavg,
    log,
    manage,
    postgres,
    postmaster_pid,
    report,
    server_env,
    tree_cpu,
)
from ingest import make_batches, send_all, warm_up  # noqa: E402


def phase(env: dict, key: str, postmaster: int, *, processes: int, bodies: list[bytes], clients: int) -> dict:
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(gunicorn(env, workers=1, name=f"web{i}")) for i in range(processes)]
        for port, _proc in servers:
            warm_up(port, 1)
        load = loadavg()
        cpu0 = sum(tree_cpu(proc.pid) for _port, proc in servers) + tree_cpu(postmaster)
        results: list[dict] = [{}] * processes

        def drive(i: int, port: int) -> None:
            results[i] = send_all(port=port, write_key=key, bodies=bodies[i::processes], clients=clients,
                                  gzipped=False)

        threads = [threading.Thread(target=drive, args=(i, port), daemon=True) for i, (port, _p) in enumerate(servers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu = sum(tree_cpu(proc.pid) for _port, proc in servers) + tree_cpu(postmaster) - cpu0
    events = sum(len(json.loads(b)["batch"]) for b in bodies)
    elapsed = max(r["elapsed"] for r in results)
    failures = [f for r in results for f in r["failures"]]
    return {"processes": processes, "events": events, "events_per_s": round(events / elapsed),
            "cpu_us": round(cpu * 1e6 / events), "non_200": sum(r["non_200"] for r in results),
            "failures": failures[:3], "load": load}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=12_000, help="events per phase")
    parser.add_argument("--layouts", default="1,2,2,1", help="web processes per phase, in order")
    parser.add_argument("--clients-per-web", type=int, default=2)
    args = parser.parse_args()
    exit_on_sigterm()
    layouts = [int(x) for x in args.layouts.split(",")]
    load0 = loadavg()
    with postgres() as url:
        env = server_env(url)
        manage("migrate", "--noinput", "-v", "0", env=env)
        key = manage("create_source", "scale", env=env).strip().splitlines()[-1]
        import psycopg

        with psycopg.connect(url) as conn:
            postmaster = postmaster_pid(conn)
        phases = []
        for n, processes in enumerate(layouts):
            bodies = [json.dumps(b, separators=(",", ":")).encode()
                      for b in make_batches(events=args.events, batch=250, users=5000, seed=100 + n)]
            result = phase(env, key, postmaster, processes=processes, bodies=bodies,
                           clients=args.clients_per_web)
            log(f"phase {n}: {processes} web process(es): {result}")
            phases.append(result)
    by = {p: [r for r in phases if r["processes"] == p] for p in sorted(set(layouts))}
    rate = {p: statistics.mean(r["events_per_s"] for r in rs) for p, rs in by.items()}
    cpu = {p: statistics.mean(r["cpu_us"] for r in rs) for p, rs in by.items()}
    problems = [f for r in phases for f in r["failures"]]
    for problem in problems:
        log(f"FAIL {problem}")
    first, last = min(rate), max(rate)
    report(
        "ingest_scale",
        speedup=round(rate[last] / rate[first], 2),
        **{f"events_per_s_{p}": round(v) for p, v in rate.items()},
        **{f"cpu_us_{p}": round(v) for p, v in cpu.items()},
        phases=[{k: r[k] for k in ("processes", "events_per_s", "cpu_us", "non_200", "load")} for r in phases],
        loadavg=load0,
        ok=not problems,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
