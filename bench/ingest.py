"""Ingestion throughput: events/s through POST /v1/batch vs. a raw COPY of the same rows.

    .venv/bin/python bench/ingest.py [--events 50000] [--batch 250] [--clients 4] [--gzip]
                                     [--stage-rule 'profile.days_since_last_seen > 30'] [--segment-rechecks]
                                     [--sign-ins 0.1]

Sends N realistic Segment events (track/identify/page mix over ~5,000 users)
to a real gunicorn server on PostgreSQL from several keep-alive HTTP clients,
checks every answer (429/503 are resent and reported as non_200, any other
non-200 fails the run) and that exactly N Event rows were stored.
--sign-ins SHARE makes that share of the events sign-ins on a new device: a visit with only a
fresh anonymousId (a new anonymous profile), and in a later request an identify with the known
userId and that anonymousId, which merges the anonymous profile (and its events) into the known
customer; `merges` in the result counts the CustomerMerge rows made.
Then, in the same run and on the same database, the baseline: the same
request bodies turned into the same rows and loaded with psycopg COPY, one
transaction per batch, into a copy of the event table (same indexes, no
foreign keys). ratio = events_per_s / baseline_per_s (1.0 = as fast as raw COPY).

--py-spy PREFIX attaches py-spy to each gunicorn worker during the HTTP phase
and writes collapsed stacks to PREFIX.<pid>.txt (needs `pip install py-spy`).
The samples are wall time: waits on PostgreSQL show up under psycopg's
Connection.wait. server_cpu_us / db_cpu_us in the result are CPU time per event.

Last stdout line: {"bench": "ingest", "events_per_s": ..., "baseline_per_s": ..., "ratio": ..., ...}
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` is our sibling

from common import (
    ROOT,
    exit_on_sigterm,
    log,
    postmaster_pid,
    report,
    stack,
    tree_cpu,
    worker_pids,
)

TRACK_NAMES = [
    "Product Viewed",
    "Product Added",
    "Cart Viewed",
    "Checkout Started",
    "Order Completed",
    "Coupon Applied",
    "Search Performed",
    "Video Played",
    "Signed In",
    "Feature Used",
]
PAGES = ["Home", "Pricing", "Docs", "Blog", "Checkout", "Account", "Search", "Product"]
PLANS = ["free", "starter", "pro", "enterprise"]
TIMEZONES = ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC", "Europe/London"]
LOCALES = ["en-US", "de-DE", "fr-FR", "ja-JP", "en-GB"]
GUESTS = 1000  # anonymous visitors who never sign in


# --- the workload -----------------------------------------------------------


def make_batches(*, events: int, batch: int, users: int, seed: int, sign_ins: float = 0.0) -> list[dict]:
    """Batch bodies as a Segment library sends them; deterministic for a seed.

    Mix: 70% track, 15% identify (traits incl. email), 10% page, all with
    userId + the user's anonymousId (as analytics.js sends after sign-in), and
    5% track from anonymous-only guests. A user's ids never change, so the run
    exercises identity lookups and first-seen customer creation, not merges.
    With `sign_ins`, that share of the events are new-device sign-ins instead (see the module's
    doc): a visit from a fresh anonymousId, then, in a later batch, the identify that merges it.
    """
    rng = random.Random(seed)
    now = datetime.now(UTC)
    bodies = []
    devices: list[tuple[int, str]] = []  # (user, anonymousId) of visits in earlier batches, not signed in yet
    for start in range(0, events, batch):
        items, visits = [], []
        for i in range(start, min(start + batch, events)):
            u = rng.randrange(users)
            if sign_ins and rng.random() < sign_ins:
                items.append(_sign_in_step(u, i, seed=seed, now=now, devices=devices, visits=visits,
                                           ts=(now - timedelta(milliseconds=(events - i) * 3)).isoformat()))
                continue
            ts = (now - timedelta(milliseconds=(events - i) * 3)).isoformat()
            context = {
                "library": {"name": "analytics-python", "version": "2.3.1"},
                "ip": f"10.{u % 256}.{(u // 256) % 256}.{rng.randrange(1, 255)}",
                "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0",
                "locale": LOCALES[u % len(LOCALES)],
                "timezone": TIMEZONES[u % len(TIMEZONES)],
            }
            event = {
                "messageId": f"bench-{seed}-{i}",
                "timestamp": ts,
                "context": context,
                "userId": f"user-{u:05d}",
                "anonymousId": f"anon-{u:05d}-{seed}",
            }
            roll = rng.random()
            if roll < 0.70:
                event.update(
                    type="track",
                    event=rng.choice(TRACK_NAMES),
                    properties={
                        "product_id": f"sku-{rng.randrange(500)}",
                        "price": round(rng.uniform(1, 300), 2),
                        "currency": "EUR",
                        "quantity": rng.randrange(1, 5),
                        "category": rng.choice(PAGES),
                    },
                )
            elif roll < 0.85:
                event.update(
                    type="identify",
                    traits={
                        "email": f"user{u}@example.com",
                        "name": f"User {u}",
                        "plan": rng.choice(PLANS),
                        "company": f"Company {u % 300}",
                        "logins": rng.randrange(1, 100),
                    },
                )
            elif roll < 0.95:
                page = rng.choice(PAGES)
                event.update(
                    type="page",
                    name=page,
                    properties={
                        "path": f"/{page.lower()}",
                        "url": f"https://shop.example.com/{page.lower()}",
                        "title": f"{page} - Shop",
                        "referrer": "https://www.google.com/",
                    },
                )
            else:
                del event["userId"]
                event.update(
                    type="track",
                    event="Product Viewed",
                    anonymousId=f"guest-{rng.randrange(GUESTS)}",
                    properties={"product_id": f"sku-{rng.randrange(500)}"},
                )
            items.append(event)
        bodies.append({"batch": items, "sentAt": now.isoformat()})
        devices.extend(visits)
    return bodies


def _sign_in_step(u: int, i: int, *, seed: int, now: datetime, devices: list, visits: list, ts: str) -> dict:
    """The next new-device event: the identify that signs in the oldest device visited in an
    earlier batch (a merge of its anonymous profile into the user's customer, where the user was
    seen before), else a visit of user `u` from a new device (only an anonymousId)."""
    event = {"messageId": f"bench-{seed}-{i}", "timestamp": ts,
             "context": {"library": {"name": "analytics.js", "version": "5.2.0"}, "timezone": "Europe/Paris"}}
    if devices:
        user, device = devices.pop(0)
        return {**event, "type": "identify", "userId": f"user-{user:05d}", "anonymousId": device,
                "traits": {"email": f"user{user}@example.com"}}
    device = f"device-{u:05d}-{seed}-{i}"
    visits.append((u, device))
    return {**event, "type": "page", "name": "Home", "anonymousId": device, "properties": {"path": "/"}}


# --- the HTTP phase ---------------------------------------------------------


def send_all(
    *, port: int, write_key: str, bodies: list[bytes], clients: int, gzipped: bool
) -> dict:
    """POST every body from `clients` threads until it gets a 200; 429, 503 and dropped
    connections are resent (as Segment clients do) and counted, anything else fails the run.

    Bodies are encoded beforehand so the client spends its CPU on sending, not
    on JSON (it shares the 2 cores with the server and PostgreSQL).
    """
    headers = {
        "Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode(),
        "Content-Type": "application/json",
        "Connection": "keep-alive",  # kept where the server allows it (gunicorn sync workers close)
    }
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    queue = itertools.count()  # next() on it is atomic under the GIL: a lock-free work queue
    statuses: Counter = Counter()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def post(
        conn: http.client.HTTPConnection, body: bytes
    ) -> tuple[int | str, float, bytes, str | None]:
        started = time.perf_counter()
        try:
            conn.request("POST", "/v1/batch", body=body, headers=headers)
            response = conn.getresponse()
            return (
                response.status,
                time.perf_counter() - started,
                response.read(),
                response.getheader("Retry-After"),
            )
        except (OSError, http.client.HTTPException) as exc:
            conn.close()  # reconnects on the next request
            return f"error {type(exc).__name__}", time.perf_counter() - started, b"", None

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while (i := next(queue)) < len(bodies):
            for _attempt in range(10):
                status, seconds, answer, retry_after = post(conn, bodies[i])
                with lock:
                    statuses[status] += 1
                    latencies.append(seconds)
                if status == 200:
                    break
                if status not in (429, 503) and not isinstance(status, str):
                    with lock:
                        failures.append(f"batch {i}: {status} {answer[:300]!r}")
                    break
                # 429/503 or a dropped connection: resend, as a Segment client does
                # (the messageIds make that safe), and count it as non-200.
                time.sleep(min(2.0, float(retry_after or 0.5)))
            else:
                with lock:
                    failures.append(f"batch {i}: no 200 after 10 attempts")
        conn.close()

    # Daemon threads: on Ctrl-C/SIGTERM the main thread tears the stack down and
    # exits without waiting for clients that would keep resending to a dead server.
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "elapsed": elapsed,
        "statuses": dict(statuses),
        "non_200": sum(n for status, n in statuses.items() if status != 200),
        "failures": failures,
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 1),
    }


def warm_up(port: int, workers: int) -> None:
    """Make every worker import Django and open its DB connection before the clock starts.

    A wrong write key is answered 401 after one DB lookup and stores nothing.
    """
    body = json.dumps({"writeKey": "wk_warmup", "batch": []}).encode()

    def hit() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(3):
            conn.request(
                "POST", "/v1/batch", body=body, headers={"Content-Type": "application/json"}
            )
            conn.getresponse().read()
        conn.close()

    threads = [threading.Thread(target=hit, daemon=True) for _ in range(workers * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- the baseline -----------------------------------------------------------

COLUMNS = (
    "source_id",
    "message_id",
    "type",
    "name",
    "user_id",
    "anonymous_id",
    "customer_id",
    "properties",
    "traits",
    "context",
    "integrations",
    "timestamp",
    "original_timestamp",
    "sent_at",
    "received_at",
    "status",
    "attempts",
    "error",
)
EMPTY = {
    "jsonb": "{}",
    "character varying": "",
    "text": "",
    "smallint": 0,
    "integer": 0,
    "bigint": 0,
    "boolean": False,
}


def baseline(conn, *, source_id: int, bodies: list[bytes]) -> float:
    """Seconds to turn the same request bodies into the same rows and COPY them in.

    One COPY and one commit per batch, like one request; one connection. The
    customer ids come from what the server resolved (looked up before the
    clock starts): the baseline stores, it does not resolve identities.
    """
    conn.execute("DROP TABLE IF EXISTS bench_event")
    # LIKE ... INCLUDING ALL copies columns, defaults, the id identity, unique
    # constraint and indexes, but not the foreign keys.
    conn.execute("CREATE TABLE bench_event (LIKE journeys_event INCLUDING ALL)")
    conn.commit()
    # Columns the model gains later (NOT NULL, filled by Django, no DB default)
    # get their empty value, so the baseline keeps working as the model grows.
    extra = [
        (name, EMPTY[dtype])
        for name, dtype in conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = 'journeys_event'"
            " AND is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO'"
        )
        if name not in COLUMNS
    ]
    columns = COLUMNS + tuple(name for name, _ in extra)
    fillers = tuple(value for _, value in extra)
    customer_of = {
        (kind, value): cid
        for kind, value, cid in conn.execute(
            "SELECT kind, value, customer_id FROM journeys_identity"
        )
    }
    copy_sql = f"COPY bench_event ({', '.join(columns)}) FROM STDIN"
    dumps = json.dumps
    started = time.perf_counter()
    for body in bodies:
        payload = json.loads(body)
        received_at = datetime.now(UTC)
        sent_at = datetime.fromisoformat(payload["sentAt"])
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for e in payload["batch"]:
                user_id, anonymous_id = e.get("userId", ""), e.get("anonymousId", "")
                customer = (
                    customer_of.get(("user_id", user_id))
                    if user_id
                    else customer_of.get(("anonymous_id", anonymous_id))
                )
                ts = datetime.fromisoformat(e["timestamp"])
                copy.write_row(
                    (
                        source_id,
                        e["messageId"],
                        e["type"],
                        e.get("event") or e.get("name") or "",
                        user_id,
                        anonymous_id,
                        customer,
                        dumps(e.get("properties", {})),
                        dumps(e.get("traits", {})),
                        dumps(e["context"]),
                        "{}",
                        ts,
                        ts,
                        sent_at,
                        received_at,
                        "pending",
                        0,
                        "",
                        *fillers,
                    )
                )
        conn.commit()
    return time.perf_counter() - started


# --- profiling (optional) ---------------------------------------------------


def start_py_spy(prefix: str, pids: list[int]) -> list[subprocess.Popen]:
    """py-spy record on each worker; collapsed stacks ("a;b;c 12") for flame graphs or grep."""
    exe = shutil.which("py-spy", path=str(ROOT / ".venv" / "bin")) or shutil.which("py-spy")
    if not exe:
        raise SystemExit("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    return [
        subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                f"{prefix}.{pid}.txt",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]


def stop_py_spy(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for proc in procs:
        proc.wait(timeout=60)


# --- main -------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=250, help="events per request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sign-ins", type=float, default=0.0, metavar="SHARE",
                        help="share of events that are new-device visits and the sign-ins that merge them")
    parser.add_argument("--gzip", action="store_true", help="send gzip-compressed bodies")
    parser.add_argument("--py-spy", metavar="PREFIX", help="profile the workers with py-spy")
    parser.add_argument("--stage-rule", metavar="RULE",
                        help="a lifecycle stage with this rule exists (the customer table's recheck trigger marks)")
    parser.add_argument("--segment-rechecks", action="store_true",
                        help="the segment-entry refresh keeps rechecks (its customer-table trigger marks)")
    args = parser.parse_args()
    exit_on_sigterm()

    batches = make_batches(events=args.events, batch=args.batch, users=args.users, seed=args.seed,
                           sign_ins=args.sign_ins)
    plain = [json.dumps(b, separators=(",", ":")).encode() for b in batches]
    wire = [gzip.compress(b, 6) for b in plain] if args.gzip else plain
    log(
        f"{args.events} events in {len(batches)} batches,"
        f" {sum(map(len, plain)) // args.events} bytes/event"
    )

    load = os.getloadavg()[0]
    if load > 0.5:
        log(
            f"load average is {load:.1f} before the run: other work shares the CPUs,"
            " so rates will be low (the CPU figures per event hold better)"
        )

    with stack(workers=args.workers) as s:
        warm_up(s.port, args.workers)
        with s.connect() as conn:
            postmaster = postmaster_pid(conn)
            if args.stage_rule:
                conn.execute("INSERT INTO journeys_lifecyclestage (key, name, \"order\", rule, description,"
                             " created_at, updated_at) VALUES ('bench', 'bench', 1, %s, '', now(), now())",
                             [args.stage_rule])
                conn.commit()
            if args.segment_rechecks:  # as after a refresh with a live segment-entry trigger
                conn.execute("INSERT INTO journeys_segmentrules (fingerprint, walked_at) VALUES ('bench', now())")
                conn.commit()
        spies = start_py_spy(args.py_spy, worker_pids(s.server)) if args.py_spy else []
        log(f"sending from {args.clients} clients to 127.0.0.1:{s.port}")
        cpu_before = tree_cpu(s.server.pid), tree_cpu(postmaster), time.process_time()
        try:
            http_run = send_all(
                port=s.port,
                write_key=s.write_key,
                bodies=wire,
                clients=args.clients,
                gzipped=args.gzip,
            )
        finally:
            stop_py_spy(spies)
        server_cpu, db_cpu, client_cpu = (
            after - before
            for after, before in zip(
                (tree_cpu(s.server.pid), tree_cpu(postmaster), time.process_time()), cpu_before
            )
        )
        log(
            f"HTTP: {http_run['elapsed']:.1f} s, statuses {http_run['statuses']};"
            f" CPU s: server {server_cpu:.1f},"
            f" PostgreSQL {db_cpu:.1f}, client {client_cpu:.1f}"
        )

        with s.connect() as conn:
            stored = conn.execute(
                "SELECT count(*) FROM journeys_event WHERE source_id = %s", [s.source_id]
            ).fetchone()[0]
            customers = conn.execute("SELECT count(*) FROM journeys_customer").fetchone()[0]
            # A profile with no identity that was not merged away: left behind when two
            # requests created the same new person at once and the other one won.
            orphans = conn.execute(
                "SELECT count(*) FROM journeys_customer c WHERE c.merged_into_id IS NULL"
                " AND NOT EXISTS (SELECT 1 FROM journeys_identity i WHERE i.customer_id = c.id)"
            ).fetchone()[0]
            tasks = conn.execute("SELECT count(*) FROM django_q_ormq").fetchone()[0]
            merges = conn.execute("SELECT count(*) FROM journeys_customermerge").fetchone()[0]
            log(
                f"stored {stored} events, {customers} customers ({orphans} without identity),"
                f" {tasks} queued tasks;"
                " running the COPY baseline"
            )
            cpu_before = tree_cpu(postmaster), time.process_time()
            base_s = baseline(conn, source_id=s.source_id, bodies=plain)
            base_db_cpu, base_client_cpu = (
                after - before
                for after, before in zip((tree_cpu(postmaster), time.process_time()), cpu_before)
            )
            copied = conn.execute("SELECT count(*) FROM bench_event").fetchone()[0]

    problems = list(http_run["failures"])
    if stored != args.events:
        problems.append(f"{stored} Event rows stored, expected {args.events}")
    if copied != args.events:
        problems.append(f"baseline copied {copied} rows, expected {args.events}")
    for problem in problems[:20]:
        log(f"FAIL {problem}")
    if http_run["non_200"]:
        # Resent and then stored, so not a failure of the run; the reason (e.g.
        # "deadlock detected" -> 503) is in tmp/bench-gunicorn.log.
        log(
            f"{http_run['non_200']} answers were not 200 (resent): {http_run['statuses']};"
            " see tmp/bench-gunicorn.log"
        )

    events_per_s = args.events / http_run["elapsed"]
    baseline_per_s = args.events / base_s
    per_event_us = 1e6 / args.events
    report(
        "ingest",
        events_per_s=round(events_per_s),
        baseline_per_s=round(baseline_per_s),
        ratio=round(events_per_s / baseline_per_s, 3),
        events=args.events,
        batch=args.batch,
        clients=args.clients,
        workers=args.workers,
        gzip=args.gzip,
        elapsed_s=round(http_run["elapsed"], 2),
        baseline_s=round(base_s, 2),
        p50_ms=http_run["p50_ms"],
        p95_ms=http_run["p95_ms"],
        non_200=http_run["non_200"],
        # CPU per event: steadier than rates when the machine is shared.
        server_cpu_us=round(server_cpu * per_event_us),
        db_cpu_us=round(db_cpu * per_event_us),
        baseline_cpu_us=round((base_db_cpu + base_client_cpu) * per_event_us),
        loadavg=round(load, 2),
        customers=customers,
        orphan_customers=orphans,
        sign_ins=args.sign_ins,
        merges=merges,
        ok=not problems,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
