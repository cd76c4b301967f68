"""Engine throughput and latency on PostgreSQL with real django-q2 workers, at 10 and at 10,000 live workflows.

    .venv/bin/python bench/engine.py [--quick] [--backlog 6000] [--rate 100] [--seconds 20] [--low-rate 20]
                                     [--big 10000] [--q-workers 2] [--clusters 1] [--rounds 2]
                                     [--reachable] [--profile PREFIX]

What runs: a private PostgreSQL (bench/common.py), gunicorn (2 sync workers) and
`manage.py qcluster` (Q_WORKERS=2, ORM broker, Q_POLL=0.05 unless --q-poll says otherwise:
an idle pusher's sleep bounds how soon a freshly enqueued batch is picked up) as separate processes. Workflows are
made and published through the services (workflow_create, version_build,
version_publish; past --via-services, bulk copies of a published one); events go in
through POST /v1/batch.

The workload, per phase (ABBA: 10 live workflows, 10,000, 10,000, 10; --rounds 1: 10, 10,000):
  - 3 workflows are triggered by the test event "Checkout Started" (re-entry: always):
    a condition step, then a send_message step on a console email channel. One
    condition is true for every test event (`event.properties.total >= 50`: the action),
    two are false (enrolment + condition, no action). The other workflows are
    triggered by other event names (never sent), so the engine has to ignore them.
  - fresh customers per phase, identified first (not timed). Without --reachable they
    have no email: the Delivery is recorded as suppressed and no send task follows.
  - throughput: a backlog of --backlog test events is stored while the workers are
    stopped; then the cluster starts and drains it. events/s = backlog / (first
    event picked up -> last action recorded).
  - latency (first two phases): the cluster runs; --rate events/s (and then --low-rate)
    are offered for --seconds s in batches of 10 (open loop: the send times are fixed in
    advance, whatever the answers take). latency = Delivery.created_at - Event.received_at.

"First action recorded" = the created_at of the first Delivery row that a run of
this event made (send_message stores it inside the engine's transaction, before the
provider is called by the separate delivery_send task). Event.received_at is stamped
by the API before the event's transaction commits. Both clocks are the same host.

CPU per event: CPU seconds of gunicorn + qcluster (all its processes) + PostgreSQL
(all backends) divided by events; steadier than wall-clock rates on a shared machine.
cost_ratio_10k_vs_10 = mean (ingest + engine) CPU per event at 10,000 workflows / at 10.

Last stdout line: {"bench": "engine", "events_per_s": ..., "p99_ms": ..., "cost_ratio_10k_vs_10": ..., ...}
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` is our sibling

from common import (  # noqa: E402
    LOG_DIR,
    PYTHON,
    ROOT,
    exit_on_sigterm,
    log,
    postmaster_pid,
    report,
    stack,
    tree_cpu,
)

TEST_EVENT = "Checkout Started"
MATCHING = 3  # workflows triggered by the test event (1 acts, 2 stop at their condition)
CHANNEL = "bench-email"
TEMPLATE = "bench-checkout"


# --- seeding (runs in a child process with Django set up) ---------------------------------------


def _definition(trigger_event: str, rule: str) -> dict:
    return {
        "trigger_kind": "event",
        "trigger_event": trigger_event,
        "reentry_policy": "always",
        "allow_concurrent_runs": True,
        "steps": [
            {"key": "check", "kind": "condition", "config": {"rule": rule}},
            {"key": "send", "kind": "send_message", "config": {"channel": CHANNEL, "template": TEMPLATE}},
        ],
        "edges": [{"from": "check", "outcome": "yes", "to": "send"}],
    }


def seed_workflows(total: int, via_services: int) -> dict:
    """Make live workflows until `total` are live. The first `via_services` go through
    workflow_create/version_build/version_publish one by one; the rest are copies of a
    published one made with bulk_create (same rows the services write, minus the audit and
    history rows), then one generation bump, because 10,000 governed publishes take
    minutes on a loaded 2-core machine. Returns timings."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import transaction
    from django.utils import timezone

    from channels_app.models import Channel, MessageTemplate
    from journeys.choices import VersionState
    from journeys.engine.compiled import bump_generation
    from journeys.models import BusinessUnit, Edge, Step, Workflow, WorkflowVersion
    from journeys.services.workflows import version_build, version_publish, workflow_create

    Channel.objects.get_or_create(name=CHANNEL, defaults={"kind": "email", "provider": "console"})
    MessageTemplate.objects.get_or_create(
        name=TEMPLATE,
        defaults={"subject": "Your cart, {{ profile.email }}", "body": "Total {{ event.properties.total }}."},
    )
    unit, _ = BusinessUnit.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    started = time.perf_counter()
    made = 0
    active = Workflow.objects.filter(status="active", live_version__isnull=False)
    live = active.count()
    if live > total:  # going back down (ABBA order): pause the newest other workflows
        excess = list(active.filter(name__startswith="bench other").order_by("-id").values_list("id", flat=True)[: live - total])
        with transaction.atomic():
            Workflow.objects.filter(id__in=excess).update(status="paused")
            bump_generation()
    elif live < total:  # going up again: resume paused ones first
        paused = list(Workflow.objects.filter(status="paused", live_version__isnull=False).order_by("id")
                      .values_list("id", flat=True)[: total - live])
        if paused:
            with transaction.atomic():
                Workflow.objects.filter(id__in=paused).update(status="active")
                bump_generation()
    live = active.count()

    def publish(name: str, event: str, rule: str) -> WorkflowVersion:
        wf = workflow_create(name=name, business_unit=unit)
        return version_publish(version=version_build(workflow=wf, definition=_definition(event, rule)))

    if live == 0:  # the workflows the test event triggers
        publish("bench match act", TEST_EVENT, "event.properties.total >= 50")
        publish("bench match no 1", TEST_EVENT, "event.properties.total >= 100000")
        publish("bench match no 2", TEST_EVENT, "profile.plan == 'nobody'")
        made += MATCHING
    n = live + made
    while n < total and made < via_services:
        publish(f"bench other {n}", f"Other Event {n}", "event.properties.total >= 50")
        n, made = n + 1, made + 1
    service_s = time.perf_counter() - started
    per_publish_ms = 1000 * service_s / made if made else 0.0
    cloned = 0
    if n < total:
        template = WorkflowVersion.objects.filter(state=VersionState.LIVE, trigger_event__startswith="Other Event").first()
        steps = list(template.steps.order_by("id"))
        edges = list(template.edges.select_related("source", "target"))
        now = timezone.now()
        for lo in range(n, total, 2000):
            hi = min(total, lo + 2000)
            with transaction.atomic():
                wfs = Workflow.objects.bulk_create(
                    Workflow(name=f"bench other {i}", business_unit=unit, status="active") for i in range(lo, hi)
                )
                versions = WorkflowVersion.objects.bulk_create(
                    WorkflowVersion(
                        workflow=wf, number=1, trigger_kind="event", trigger_event=f"Other Event {i}",
                        trigger_config={}, entry_rule="", reentry_policy="always", allow_concurrent_runs=True,
                        entry_step="check", state=VersionState.LIVE, frozen_at=now, published_at=now,
                    )
                    for i, wf in zip(range(lo, hi), wfs)
                )
                new_steps = Step.objects.bulk_create(
                    Step(version=v, key=s.key, kind=s.kind, name=s.name, config=s.config) for v in versions for s in steps
                )
                by = {(s.version_id, s.key): s for s in new_steps}
                Edge.objects.bulk_create(
                    Edge(version=v, source=by[(v.pk, e.source.key)], outcome=e.outcome, target=by[(v.pk, e.target.key)])
                    for v in versions for e in edges
                )
                for wf, v in zip(wfs, versions):
                    wf.live_version = v
                Workflow.objects.bulk_update(wfs, ["live_version"])
                cloned += hi - lo
        with transaction.atomic():
            bump_generation()
    return {
        "live": active.count(),
        "via_services": made,
        "cloned": cloned,
        "publish_ms": round(per_publish_ms, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_child(env: dict, argv: list[str]) -> dict:
    done = subprocess.run(
        [str(PYTHON), str(Path(__file__).resolve()), *argv],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_seed(env: dict, total: int, via_services: int) -> dict:
    return run_child(env, ["--_seed", str(total), "--_via-services", str(via_services)])


def count_queries(prefix: str) -> dict:
    """Child process: run events_process on the pending events whose messageId starts with
    `prefix` in one task-sized call, with Django's query log on; SQL statements per event by table."""
    import re
    from collections import Counter

    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from journeys.engine.processor import events_process
    from journeys.models import Event

    ids = list(Event.objects.filter(message_id__startswith=prefix, status="pending").values_list("id", flat=True))
    events_process(event_ids=ids[:5])  # warm the caches (trigger index, compiled versions)
    rest = ids[5:]
    connection.queries_log = type(connection.queries_log)(maxlen=1_000_000)  # default keeps 9,000
    started = time.perf_counter()
    with CaptureQueriesContext(connection) as ctx:
        done = events_process(event_ids=rest)
    seconds = time.perf_counter() - started
    tables: Counter = Counter()
    for q in ctx.captured_queries:
        sql = q["sql"]
        verb = sql.split(None, 1)[0].upper()
        m = re.search(r'(?:FROM|INTO|UPDATE)\s+"([a-z_]+)"', sql)
        tables[f"{verb} {m.group(1) if m else '?'}"] += 1
    n = max(done, 1)
    return {
        "events": done,
        "queries_per_event": round(len(ctx.captured_queries) / n, 1),
        "ms_per_event_in_process": round(1000 * seconds / n, 2),
        "top": {k: round(v / n, 2) for k, v in tables.most_common(15)},
    }


def start_spy(output: str, pid: int) -> subprocess.Popen:
    """py-spy on the qcluster and its worker processes (collapsed stacks, wall time incl. idle)."""
    exe = ROOT / ".venv" / "bin" / "py-spy"
    return subprocess.Popen(
        [str(exe), "record", "--pid", str(pid), "--subprocesses", "--rate", "50", "--nonblocking",
         "--format", "raw", "--output", output],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


# --- the q2 cluster ---------------------------------------------------------------------------


class Cluster:
    """`manage.py qcluster` processes (each with Q_WORKERS workers), in their own sessions."""

    def __init__(self, env: dict, *, processes: int = 1, q_workers: int = 2, q_poll: float | None = None) -> None:
        self.env = {**env, "Q_WORKERS": str(q_workers), **({"Q_POLL": str(q_poll)} if q_poll else {})}
        self.count = processes
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        LOG_DIR.mkdir(exist_ok=True)
        for i in range(self.count):
            logfile = open(LOG_DIR / f"bench-qcluster-{i}.log", "a")
            self.procs.append(
                subprocess.Popen(
                    [str(PYTHON), "manage.py", "qcluster"], env=self.env, cwd=ROOT,
                    stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
                )
            )

    def cpu(self) -> float:
        return sum(tree_cpu(p.pid) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("qcluster did not stop in 30 s; killing it")
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []


@contextlib.contextmanager
def cluster(env: dict, **kwargs):
    c = Cluster(env, **kwargs)
    c.start()
    try:
        yield c
    finally:
        c.stop()


# --- sending ----------------------------------------------------------------------------------


class Sender:
    def __init__(self, port: int, write_key: str) -> None:
        self.port = port
        self.headers = {
            "Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode(),
            "Content-Type": "application/json",
        }
        self.local = threading.local()

    def post(self, body: bytes) -> None:
        for _attempt in range(10):
            conn = getattr(self.local, "conn", None) or http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            self.local.conn = conn
            try:
                conn.request("POST", "/v1/batch", body=body, headers=self.headers)
                response = conn.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                time.sleep(0.2)
                continue
            if response.status == 200:
                return
            if response.status in (429, 503):
                time.sleep(0.5)
                continue
            raise RuntimeError(f"/v1/batch answered {response.status}: {answer[:300]!r}")
        raise RuntimeError("/v1/batch: no 200 after 10 attempts")

    def post_all(self, bodies: list[bytes], clients: int = 4) -> None:
        it = iter(range(len(bodies)))
        lock = threading.Lock()
        errors: list[BaseException] = []

        def work() -> None:
            while True:
                with lock:
                    i = next(it, None)
                if i is None or errors:
                    return
                try:
                    self.post(bodies[i])
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

        threads = [threading.Thread(target=work, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def paced(self, bodies: list[bytes], interval_s: float, threads: int = 4) -> float:
        """Open loop: body i is due at start + i*interval whatever earlier answers took.
        Returns the worst lateness of a send (s), to show the client kept up."""
        start = time.perf_counter() + 0.05
        it = iter(range(len(bodies)))
        lock = threading.Lock()
        late = [0.0]
        errors: list[BaseException] = []

        def work() -> None:
            while True:
                with lock:
                    i = next(it, None)
                if i is None:
                    return
                due = start + i * interval_s
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                else:
                    late[0] = max(late[0], -wait)
                try:
                    self.post(bodies[i])
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

        ts = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise errors[0]
        return late[0]


def bodies_for(events: list[dict], batch: int) -> list[bytes]:
    sent_at = datetime.now(UTC).isoformat()
    return [
        json.dumps({"batch": events[i : i + batch], "sentAt": sent_at}, separators=(",", ":")).encode()
        for i in range(0, len(events), batch)
    ]


def identify_events(tag: str, users: int, reachable: bool = False) -> list[dict]:
    """Without an email the Delivery is recorded as suppressed (no address): the action is
    recorded, but no delivery_send task and no 'Message Sent' event follow (--reachable)."""
    email = {"email": f"{tag}.{{u}}@example.com"} if reachable else {}
    return [
        {
            "type": "identify", "messageId": f"{tag}-id-{u}", "userId": f"{tag}-user-{u}",
            "traits": {**{k: v.format(u=u) for k, v in email.items()}, "plan": "pro", "first_name": f"N{u}"},
        }
        for u in range(users)
    ]


def track_events(tag: str, users: int, count: int, offset: int = 0) -> list[dict]:
    """Test events from the phase's identified users; the tag's first two characters name the phase."""
    return [
        {
            "type": "track", "messageId": f"{tag}-tr-{i}", "userId": f"{tag[:2]}-user-{i % users}",
            "event": TEST_EVENT, "properties": {"total": 120 + i % 50, "currency": "EUR", "items": 2},
            "timestamp": datetime.now(UTC).isoformat(),
        }
        for i in range(offset, offset + count)
    ]


# --- measuring ---------------------------------------------------------------------------------


def pending(conn) -> int:
    """Events not yet processed plus queued tasks (a delivery_send task records a
    'Message Sent'-style internal event, which is pending again until processed)."""
    return conn.execute(
        "SELECT (SELECT count(*) FROM journeys_event WHERE status = 'pending')"
        " + (SELECT count(*) FROM django_q_ormq)"
    ).fetchone()[0]


def wait_drained(conn, *, timeout_s: float, what: str) -> float:
    """Poll until no event is pending; returns the wall time it took."""
    started = time.perf_counter()
    last_log = started
    while True:
        left = pending(conn)
        if left == 0:
            return time.perf_counter() - started
        now = time.perf_counter()
        if now - started > timeout_s:
            raise RuntimeError(f"{what}: {left} events still pending after {timeout_s:.0f} s")
        if now - last_log > 15:
            log(f"  {what}: {left} pending")
            last_log = now
        time.sleep(0.2)


LATENCY_SQL = """
SELECT e.id, extract(epoch FROM e.received_at)::float8, extract(epoch FROM e.processed_at)::float8,
       extract(epoch FROM min(d.created_at))::float8
FROM journeys_event e
LEFT JOIN journeys_journeyrun r ON r.trigger_event_id = e.id
LEFT JOIN channels_app_delivery d ON d.run_id = r.id
WHERE e.message_id LIKE %s
GROUP BY e.id
"""


def action_times(conn, prefix: str) -> list[tuple]:
    return conn.execute(LATENCY_SQL, [prefix + "%"]).fetchall()


OTHER_TASKS_SQL = """
SELECT func, round((extract(epoch FROM started) - %s)::numeric, 1)::float8,
       round((extract(epoch FROM stopped - started) * 1000)::numeric)::float8
FROM django_q_task
WHERE stopped >= to_timestamp(%s) AND started <= to_timestamp(%s)
  AND func NOT IN ('journeys.tasks.events_process', 'channels_app.tasks.deliveries_send')
ORDER BY started
"""


def other_tasks(conn, start: float, end: float) -> list[list]:
    """Tasks other than the engine's that ran during a latency run ([func, started at s, ms]): a
    scheduled task sharing the two workers shows up as a stall in worst_ms_per_second."""
    return [[f.rsplit(".", 1)[-1], at, ms] for f, at, ms in conn.execute(OTHER_TASKS_SQL, [start, start, end]).fetchall()]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def cpu_snapshot(s, c: Cluster | None, postmaster: int) -> tuple[float, float, float]:
    return tree_cpu(s.server.pid), (c.cpu() if c else 0.0), tree_cpu(postmaster)


def delta(after, before) -> tuple:
    return tuple(a - b for a, b in zip(after, before))


def latency_run(s, c, postmaster: int, sender, conn, *, tag: str, rate: float, args) -> dict:
    """Offer `rate` events/s for args.seconds in batches of 10 (open loop), then read the latencies."""
    n = int(rate * args.seconds)
    per_batch = 10
    lat_bodies = bodies_for(track_events(tag, args.users, n), per_batch)
    cpu0 = cpu_snapshot(s, c, postmaster)
    load0 = os.getloadavg()[0]
    lateness = sender.paced(lat_bodies, per_batch / rate)
    wait_drained(conn, timeout_s=args.timeout, what="latency")
    time.sleep(1.0)
    lat_cpu = delta(cpu_snapshot(s, c, postmaster), cpu0)
    rows = action_times(conn, f"{tag}-tr-")
    lat = [(r[3] - r[1]) * 1000 for r in rows if r[3] is not None]
    pick = [(r[2] - r[1]) * 1000 for r in rows if r[2] is not None]
    # the worst latency per second of the run: a slow start (cold caches, a scheduled task) vs a steady queue
    start = min((r[1] for r in rows), default=0.0)
    worst: dict[int, float] = {}
    for r in rows:
        if r[3] is not None:
            second = int(r[1] - start)
            worst[second] = max(worst.get(second, 0.0), (r[3] - r[1]) * 1000)
    return {
        "events": len(rows),
        "with_action": len(lat),
        "offered_per_s": rate,
        "seconds": args.seconds,
        "batch": per_batch,
        "p50_ms": round(percentile(lat, 0.50), 1),
        "p90_ms": round(percentile(lat, 0.90), 1),
        "p99_ms": round(percentile(lat, 0.99), 1),
        "max_ms": round(max(lat), 1) if lat else None,
        "pickup_p50_ms": round(percentile(pick, 0.50), 1),  # received -> the task's start
        "pickup_p99_ms": round(percentile(pick, 0.99), 1),
        "sender_late_max_ms": round(lateness * 1000, 1),
        "worst_ms_per_second": [round(worst[k]) for k in sorted(worst)],
        "other_tasks": other_tasks(conn, start, max((r[3] or r[1] for r in rows), default=start)),
        "cpu_us": {k: round(v * 1e6 / n) for k, v in zip(("server", "workers", "db"), lat_cpu)},
        "cpu_us_total": round(sum(lat_cpu) * 1e6 / n),
        "loadavg": round(load0, 2),
    }


def phase(s, postmaster: int, *, tag: str, workflows: int, args, latency: bool = True) -> dict:
    """One full measurement at the current number of live workflows."""
    out: dict = {"workflows": workflows}
    with s.connect(autocommit=True) as conn:
        # customers for this phase, identified (not timed)
        with cluster(s.env, processes=args.clusters, q_workers=args.q_workers, q_poll=args.q_poll):
            Sender(s.port, s.write_key).post_all(bodies_for(identify_events(tag, args.users, args.reachable), 250))
            wait_drained(conn, timeout_s=300, what="identify")

        # throughput: store a backlog while no worker runs, then drain it
        sender = Sender(s.port, s.write_key)
        events = track_events(tag + "b", args.users, args.backlog)
        bodies = bodies_for(events, 250)
        cpu0 = cpu_snapshot(s, None, postmaster)
        t0 = time.perf_counter()
        sender.post_all(bodies)
        ingest_wall = time.perf_counter() - t0
        ingest_cpu = delta(cpu_snapshot(s, None, postmaster), cpu0)
        log(f"  backlog of {args.backlog} stored in {ingest_wall:.1f} s; starting the cluster")
        c = Cluster(s.env, processes=args.clusters, q_workers=args.q_workers, q_poll=args.q_poll)
        cpu0 = cpu_snapshot(s, c, postmaster)
        load0 = os.getloadavg()[0]
        c.start()
        spy = start_spy(f"{args.profile}.{tag}.txt", c.procs[0].pid) if args.profile else None
        try:
            t0 = time.perf_counter()
            drain_wall = wait_drained(conn, timeout_s=args.timeout, what="backlog")
            engine_cpu = delta(cpu_snapshot(s, c, postmaster), cpu0)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            rows = action_times(conn, f"{tag}b-tr-")
            first_pick = min(r[2] for r in rows if r[2] is not None)
            acted = [r for r in rows if r[3] is not None]
            last_action = max(r[3] for r in acted)
            span = last_action - first_pick
            out["throughput"] = {
                "events": len(rows),
                "with_action": len(acted),
                "events_per_s": round(len(rows) / span, 1),
                "span_s": round(span, 2),
                "drain_wall_s": round(drain_wall, 2),  # includes the cluster's start-up
                "ingest_per_s": round(args.backlog / ingest_wall, 1),
                "ingest_cpu_us": {k: round(v * 1e6 / args.backlog) for k, v in zip(("server", "db"), (ingest_cpu[0], ingest_cpu[2]))},
                "engine_cpu_us": {k: round(v * 1e6 / args.backlog) for k, v in zip(("server", "workers", "db"), engine_cpu)},
                "loadavg": round(load0, 2),
            }
            out["cost_cpu_us"] = round((ingest_cpu[0] + ingest_cpu[2] + sum(engine_cpu)) * 1e6 / args.backlog)
            out["engine_cpu_us"] = round(sum(engine_cpu) * 1e6 / args.backlog)
            log(f"  throughput: {out['throughput']}")

            # latency at a fixed offered rate (the cluster keeps running; let it settle first)
            for key, rate in (("latency", args.rate), ("latency_low", args.low_rate)):
                if not rate or not latency:
                    continue
                time.sleep(2)
                out[key] = latency_run(s, c, postmaster, sender, conn, tag=f"{tag}{key[-1]}", rate=rate, args=args)
                log(f"  {key}: {out[key]}")
        finally:
            c.stop()
        if args.profile and latency:
            # SQL statements per event: 200 more events, processed in a child with Django's query log
            sender.post_all(bodies_for(track_events(tag + "q", args.users, 200), 200))
            out["queries"] = run_child(s.env, ["--_count-queries", f"{tag}q-tr-"])
            log(f"  queries: {out['queries']}")
        out["deliveries"] = dict(
            conn.execute("SELECT status, count(*) FROM channels_app_delivery GROUP BY status").fetchall()
        )
    return out


# --- main ---------------------------------------------------------------------------------------


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller run (about 3 minutes)")
    p.add_argument("--backlog", type=int)
    p.add_argument("--rate", type=float, default=100.0, help="offered events/s in the latency phase")
    p.add_argument("--seconds", type=float, help="length of the latency phase")
    p.add_argument("--low-rate", type=float, default=20.0,
                   help="a second latency run below capacity (0: skip)")
    p.add_argument("--small", type=int, default=10, help="live workflows in the baseline phase")
    p.add_argument("--big", type=int, default=10_000, help="live workflows in the second phase")
    p.add_argument("--via-services", type=int, default=300,
                   help="workflows published one by one through the services; the rest are bulk copies")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--reachable", action="store_true",
                   help="customers get an email: deliveries are really sent (delivery_send tasks, 'Message Sent' events)")
    p.add_argument("--q-workers", type=int, default=2)
    p.add_argument("--q-poll", type=float, default=0.05,
                   help="Q_POLL of the qcluster (s): how long an idle ORM-broker pusher sleeps before looking "
                        "again; it bounds the pickup delay of a freshly enqueued batch (0: the settings' value)")
    p.add_argument("--rounds", type=int, default=2, choices=(1, 2),
                   help="1: small then big; 2: small, big, big, small (ABBA, cancels a load drift)")
    p.add_argument("--clusters", type=int, default=1, help="qcluster processes")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--profile", metavar="PREFIX", help="py-spy the workers (PREFIX.<phase>.txt) and count SQL per event")
    p.add_argument("--_count-queries", help=argparse.SUPPRESS)
    p.add_argument("--_seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_via-services", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.backlog is None:
        args.backlog = 2000 if args.quick else 6000
    if args.seconds is None:
        args.seconds = 8.0 if args.quick else 20.0
    if args.quick:
        args.users = min(args.users, 500)
        args.via_services = min(args.via_services, 50)
    return args


def main() -> int:
    args = parse()
    if args._count_queries:
        print(json.dumps(count_queries(args._count_queries)))
        return 0
    if args._seed is not None:  # child process: make workflows, print a JSON line
        print(json.dumps(seed_workflows(args._seed, args._via_services)))
        return 0
    exit_on_sigterm()
    started = time.perf_counter()
    machine = {"nproc": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    log(f"machine: {machine}")
    phases = []
    # ABBA: small, big, big, small, so that a drift of the machine's load hits both sides alike
    order = [args.small, args.big, args.big, args.small][: 2 * args.rounds]
    with stack(workers=2) as s:
        with s.connect() as conn:
            postmaster = postmaster_pid(conn)
        for i, count in enumerate(order):
            seeded = run_seed(s.env, count, args.via_services)
            log(f"phase {i}: {seeded}")
            result = phase(s, postmaster, tag=f"p{i}", workflows=count, args=args, latency=i < 2)
            result["seed"] = seeded
            phases.append(result)
    small = [p for p in phases if p["workflows"] == args.small]
    big = [p for p in phases if p["workflows"] == args.big]

    def mean(rows, *keys):
        values = []
        for r in rows:
            for k in keys:
                r = r[k]
            values.append(r)
        return sum(values) / len(values)

    ratio = mean(big, "cost_cpu_us") / mean(small, "cost_cpu_us")
    eps_small, eps_big = mean(small, "throughput", "events_per_s"), mean(big, "throughput", "events_per_s")
    out = dict(
        events_per_s=round(eps_small, 1),
        p99_ms=phases[0]["latency"]["p99_ms"],
        cost_ratio_10k_vs_10=round(ratio, 3),
        engine_cpu_ratio_10k_vs_10=round(mean(big, "engine_cpu_us") / mean(small, "engine_cpu_us"), 3),
        pair_cost_ratios=[round(b["cost_cpu_us"] / a["cost_cpu_us"], 3) for a, b in zip(small, big)],
        events_per_s_10k=round(eps_big, 1),
        wall_ratio_10k_vs_10=round(eps_small / eps_big, 3),
        p50_ms=phases[0]["latency"]["p50_ms"],
        p50_ms_10k=phases[1]["latency"]["p50_ms"],
        p99_ms_10k=phases[1]["latency"]["p99_ms"],
        p99_ms_low_rate=phases[0].get("latency_low", {}).get("p99_ms"),
        p99_ms_low_rate_10k=phases[1].get("latency_low", {}).get("p99_ms"),
        low_rate_per_s=args.low_rate,
        cpu_us_per_event={str(args.small): round(mean(small, "cost_cpu_us")), str(args.big): round(mean(big, "cost_cpu_us"))},
        queries_per_event=phases[1].get("queries", {}).get("queries_per_event"),
        q_workers=args.q_workers,
        q_poll=args.q_poll or None,
        clusters=args.clusters,
        backlog=args.backlog,
        offered_per_s=args.rate,
        quick=args.quick,
        machine={**machine, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        targets={"events_per_s>=1000": eps_small >= 1000,
                 "p99_ms<500": phases[0]["latency"]["p99_ms"] < 500, "cost_ratio<=1.2": ratio <= 1.2},
        phases=phases,
        runtime_s=round(time.perf_counter() - started, 1),
    )
    log(json.dumps(out["phases"], indent=1))
    del out["phases"]
    report("engine", **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
