"""Sending end to end: events through /v1/batch into a live workflow that sends one message per
event, through the `smtp` provider to a local aiosmtpd server and through the `webhook`
provider to a local HTTP server, against a bare client sending the same messages on one
connection to the same server in the same run.

    .venv/bin/python bench/dispatch.py [--events 3000] [--burst 2000] [--providers smtp,webhook] [--quick]
                                       [--resume] [--profile PREFIX] [--server-latency-ms 20]
                                       [--network-rtt-ms 20]

What runs: a private PostgreSQL (bench/common.py), gunicorn (2 sync workers), `manage.py
qcluster` (Q_WORKERS=2, ORM broker) and the receiving server, each its own process (the
server in a child of this script: it stamps each message's arrival with the wall clock and
writes it to a file). Customers are identified first (not timed). Per provider:

  - throughput: --events events (one per customer) posted by 4 clients in batches of 250;
    messages/s = events / (the first event's received_at -> the last message's arrival).
  - baseline (before and after the burst; the mean is used): the messages the server
    received in the throughput run, byte for byte, sent again by one bare client on one
    connection (`smtplib.SMTP.sendmail`; `http.client` keep-alive POSTs with the same
    headers and bodies). ratio = ours / baseline.
  - burst: --burst events posted at once; latency of each = its message's arrival - the
    event's received_at (the API's clock; same host). p50, p99.

The workflow: trigger event -> send_message (template: a subject naming the event, text and
HTML with a link: click tracking and an open pixel, List-Unsubscribe; topic product_updates).
CPU seconds per message of the web, the workers, PostgreSQL and the receiving server are
reported next to the wall-clock rates (this machine is shared).

--resume: the event resumes a waiting run instead of starting one (an order confirmation that a
cart journey waits for: trigger "Cart Updated" -> wait_for_event -> send_message). Before each
timed run, every customer of it gets one "Cart Updated" event and the runs are left waiting (not
timed); the timed events then close those waits and send. Same figures, same baseline.

--server-latency-ms N: the receiving server answers each message N ms later (SMTP: the reply to
DATA; HTTP: the response), as a relay or an API across a network does; the bare client pays the
same. Local servers answer in well under a millisecond, so without it the bench measures CPU;
with it, how many sessions a dispatcher keeps busy at once (a channel's `connections`).

--network-rtt-ms N: the server sits behind a network: everything it writes reaches the client N ms
later (a TCP proxy in the sink's process), so every round trip costs N ms, as across a real
network. The SMTP server offers PIPELINING, as real relays do (smtplib, the baseline, never
pipelines: four round trips a message; ours two).

Last stdout line: {"bench": "dispatch", "smtp_ratio": ..., "smtp_burst_p99_s": ..., "webhook_ratio": ..., ...}
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` is our sibling

from common import (  # noqa: E402
    LOG_DIR, PYTHON, ROOT, exit_on_sigterm, free_port, log, postmaster_pid, qcluster, report, stack, tree_cpu,
)
from engine import Sender, bodies_for, start_spy  # noqa: E402  (events through /v1/batch, 4 clients)

EVENTS = {"smtp": "Order Confirmed", "webhook": "Order Shipped"}
CHANNELS = {"smtp": "bench-mail", "webhook": "bench-hook"}
SECRET_ENV = "JOURNEYS_SECRET_BENCH_HOOK"
FROM = "shop@bench.test"


# --- the receiving servers (a child process: --_sink smtp|webhook) ---------------------------------


def delay_proxy(port: int, target: int, delay_s: float) -> None:
    """Listen on `port`, forward each connection to `target`: the client's bytes at once, the
    server's `delay_s` later (in order): every round trip costs delay_s."""
    import asyncio
    import socket

    async def pipe(reader, writer, delay):
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()

        async def out():
            while True:
                due, data = await chunks.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if data is None:
                    writer.close()
                    return
                writer.write(data)

        sender = asyncio.ensure_future(out())
        try:
            while data := await reader.read(1 << 16):
                chunks.put_nowait((loop.time() + delay, data))
        except OSError:
            pass
        chunks.put_nowait((loop.time() + delay, None))
        await sender

    async def connection(client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        for w in (client_writer, server_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pipe(client_reader, server_writer, 0.0), pipe(server_reader, client_writer, delay_s))

    async def serve():
        server = await asyncio.start_server(connection, "127.0.0.1", port)
        await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()


def run_sink(kind: str, port: int, out: str, latency_s: float = 0.0, rtt_s: float = 0.0) -> None:
    """Receive messages until SIGTERM; one JSON line per message: arrival time, key, raw content.
    latency_s: each message is answered that much later (a server across a network).
    rtt_s: the server listens behind delay_proxy (on `port`)."""
    if rtt_s:
        target = free_port()
        delay_proxy(port, target, rtt_s)
        port = target
    lock = threading.Lock()
    sink = open(out, "a", buffering=1 << 16)
    signal.signal(signal.SIGTERM, lambda *_: (sink.flush(), os._exit(0)))

    def write(row: dict) -> None:
        line = json.dumps(row) + "\n"
        with lock:
            sink.write(line)
            if row.get("flush"):
                sink.flush()

    if kind == "smtp":
        from aiosmtpd.controller import Controller

        import asyncio

        class Handler:
            async def handle_EHLO(self, server, session, envelope, hostname, responses):
                session.host_name = hostname
                return [*responses[:-1], "250-PIPELINING", responses[-1]]

            async def handle_DATA(self, server, session, envelope):
                if latency_s:
                    await asyncio.sleep(latency_s)
                write({"t": time.time(), "to": envelope.rcpt_tos[0], "from": envelope.mail_from,
                       "raw": envelope.original_content.decode("latin-1")})
                return "250 OK"

        controller = Controller(Handler(), hostname="127.0.0.1", port=port)
        controller.start()
    else:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Receiver(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                write({"t": time.time(), "path": self.path, "body": body.decode(),
                       "headers": {k: v for k, v in self.headers.items()
                                   if k.lower() in ("content-type", "x-timestamp", "x-signature", "idempotency-key",
                                                    "user-agent")}})
                answer = b'{"id": "ok"}'
                if latency_s:
                    time.sleep(latency_s)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    while True:  # flush now and then, so the bench sees arrivals within ~0.1 s
        time.sleep(0.1)
        with lock:
            sink.flush()


class Sink:
    """The receiving server as a child process; `rows()` reads what it received so far."""

    def __init__(self, kind: str, latency_ms: float = 0.0, rtt_ms: float = 0.0) -> None:
        self.kind, self.port = kind, free_port()
        LOG_DIR.mkdir(exist_ok=True)
        self.path = LOG_DIR / f"bench-dispatch-{kind}-sink.jsonl"
        self.path.write_text("")
        self.proc = subprocess.Popen([str(PYTHON), str(Path(__file__).resolve()), "--_sink", kind,
                                      "--_port", str(self.port), "--_out", str(self.path),
                                      "--server-latency-ms", str(latency_ms), "--network-rtt-ms", str(rtt_ms)], cwd=ROOT,
                                     start_new_session=True)
        self._offset, self._rows = 0, []
        deadline = time.monotonic() + 30
        import socket

        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the {kind} sink did not start")
                time.sleep(0.1)

    def rows(self) -> list[dict]:
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        self._rows += [json.loads(line) for line in complete.splitlines() if line.strip()]
        return self._rows

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ref_of(kind: str, row: dict) -> str:
    """The event's messageId, which the template puts in the subject: 'Order <ref> confirmed'."""
    if kind == "smtp":
        head = row["raw"].split("\r\n\r\n", 1)[0].replace("\r\n ", " ")
        subject = next(line for line in head.split("\r\n") if line.startswith("Subject:"))
    else:
        subject = json.loads(row["body"])["subject"]
    return subject.split("Order ", 1)[1].split(" ", 1)[0]


# --- seeding (a child process with Django: --_seed smtp|webhook PORT) ------------------------------


CART = "Cart Updated"


def seed(kind: str, port: int, resume: bool = False) -> dict:
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from channels_app.models import Channel, MessageTemplate, Topic
    from journeys.models import BusinessUnit
    from journeys.services.workflows import version_build, version_publish, workflow_create

    if kind == "smtp":
        channel = Channel.objects.create(name=CHANNELS[kind], kind="email", provider="smtp", breaker_threshold=50,
                                         settings={"host": "127.0.0.1", "port": port, "from_email": FROM,
                                                   "timeout": 30})
    else:
        channel = Channel.objects.create(name=CHANNELS[kind], kind="webhook", provider="webhook", breaker_threshold=50,
                                         settings={"url": f"http://127.0.0.1:{port}/hooks/orders",
                                                   "secret_env": SECRET_ENV, "timeout": 30})
    template = MessageTemplate.objects.create(
        name=f"bench-{kind}", topic=Topic.objects.get(slug="product_updates"), channel_kind=channel.kind,
        subject="Order {{ event.properties.ref }} confirmed",
        body=("Hi {{ profile.first_name }}, thank you for your order {{ event.properties.ref }} of "
              "{{ event.properties.total }} EUR. We will let you know when it ships. Questions? Just reply."),
        html_body=("<html><body><p>Hi {{ profile.first_name }},</p><p>thank you for your order "
                   "<b>{{ event.properties.ref }}</b> of {{ event.properties.total }} EUR.</p>"
                   '<p><a href="https://shop.bench.test/orders">Your orders</a></p></body></html>'),
    )
    unit, _ = BusinessUnit.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    workflow = workflow_create(name=f"bench {kind}", business_unit=unit)
    send = {"key": "send", "kind": "send_message", "config": {"channel": channel.name, "template": template.name}}
    definition = {"trigger_kind": "event", "trigger_event": EVENTS[kind], "reentry_policy": "always",
                  "allow_concurrent_runs": True, "steps": [send]}
    if resume:
        definition.update(trigger_event=CART, steps=[
            {"key": "wait", "kind": "wait_for_event", "config": {"event": EVENTS[kind], "timeout": "1d"}}, send],
            edges=[{"from": "wait", "outcome": "event", "to": "send"}])
    version_publish(version=version_build(workflow=workflow, definition=definition), reason="bench")
    return {"channel": channel.pk}


def run_child(env: dict, argv: list[str]) -> dict:
    done = subprocess.run([str(PYTHON), str(Path(__file__).resolve()), *argv], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- posting events --------------------------------------------------------------------------------


def identify_events(count: int) -> list[dict]:
    return [{"type": "identify", "userId": f"c{i}", "messageId": f"id-{i}",
             "traits": {"email": f"c{i}@bench.test", "first_name": f"N{i}"}} for i in range(count)]


def order_events(kind: str, tag: str, count: int) -> list[dict]:
    return [{"type": "track", "userId": f"c{i}", "event": EVENTS[kind], "messageId": f"{kind}-{tag}-{i}",
             "properties": {"ref": f"{kind}-{tag}-{i}", "total": 40 + i % 60}} for i in range(count)]


def cart_events(kind: str, tag: str, count: int) -> list[dict]:
    return [{"type": "track", "userId": f"c{i}", "event": CART, "messageId": f"cart-{kind}-{tag}-{i}",
             "properties": {"items": 1 + i % 5}} for i in range(count)]


def received_at(conn, prefix: str) -> dict[str, float]:
    rows = conn.execute("SELECT message_id, extract(epoch FROM received_at)::float8 FROM journeys_event"
                        " WHERE message_id LIKE %s", [prefix + "%"]).fetchall()
    return dict(rows)


def wait_for(sink: Sink, kind: str, refs: set[str], timeout: float) -> dict[str, float]:
    """Arrival time of the message of each ref (the first, if one came twice: counted in `twice`)."""
    started, last_log = time.monotonic(), time.monotonic()
    while True:
        arrived: dict[str, float] = {}
        twice = 0
        for row in sink.rows():
            ref = ref_of(kind, row)
            if ref in refs:
                if ref in arrived:
                    twice += 1
                else:
                    arrived[ref] = row["t"]
        if len(arrived) == len(refs):
            if twice:
                raise RuntimeError(f"{twice} messages arrived twice")
            return arrived
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{len(refs) - len(arrived)} of {len(refs)} messages not received in {timeout:.0f} s")
        if time.monotonic() - last_log > 15:
            log(f"    {len(arrived)}/{len(refs)} received")
            last_log = time.monotonic()
        time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


# --- the bare baselines ----------------------------------------------------------------------------


def bare_smtp(port: int, rows: list[dict]) -> tuple[float, float]:
    """The same messages, byte for byte, on one SMTP connection: (messages/s, client CPU s)."""
    messages = [(row["from"], row["to"], row["raw"].encode("latin-1")) for row in rows]
    cpu0, started = time.thread_time(), time.perf_counter()
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    for sender, to, raw in messages:
        client.sendmail(sender, [to], raw)
    client.quit()
    return len(messages) / (time.perf_counter() - started), time.thread_time() - cpu0


def bare_http(port: int, rows: list[dict]) -> tuple[float, float]:
    """The same requests (path, headers, body) on one keep-alive connection."""
    requests = [(row["path"], row["headers"], row["body"].encode()) for row in rows]
    cpu0, started = time.thread_time(), time.perf_counter()
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for path, headers, body in requests:
        client.request("POST", path, body=body, headers=headers)
        response = client.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"the HTTP sink answered {response.status}")
    client.close()
    return len(requests) / (time.perf_counter() - started), time.thread_time() - cpu0


# --- one provider --------------------------------------------------------------------------------


def provider_run(s, postmaster: int, kind: str, args) -> dict:
    sink = Sink(kind, args.server_latency_ms, args.network_rtt_ms)
    try:
        run_child(s.env, ["--_seed", kind, "--_port", str(sink.port), *(["--resume"] if args.resume else [])])
        sender = Sender(s.port, s.write_key)
        out: dict = {}
        with qcluster(s.env, q_workers=args.q_workers, name=f"dispatch-{kind}") as cluster, s.connect(autocommit=True) as conn:

            def cpu() -> tuple[float, float, float, float]:
                return tree_cpu(s.server.pid), tree_cpu(cluster.pid), tree_cpu(postmaster), sink.cpu()

            def prime(tag: str, count: int) -> None:
                """--resume: one waiting run for each of the customers the timed events go to."""
                if not args.resume:
                    return
                sender.post_all(bodies_for(cart_events(kind, tag, count), 250))
                deadline = time.monotonic() + args.timeout
                while conn.execute("SELECT count(*) FROM journeys_journeyrun WHERE status = 'waiting'"
                                   " AND wait_event = %s", [EVENTS[kind]]).fetchone()[0] < count:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the cart runs did not reach their wait")
                    time.sleep(0.2)

            def timed(tag: str, count: int) -> tuple[list[float], float, dict]:
                prime(tag, count)
                events = order_events(kind, tag, count)
                refs = {e["properties"]["ref"] for e in events}
                cpu0, load0 = cpu(), os.getloadavg()[0]
                sender.post_all(bodies_for(events, 250))
                arrived = wait_for(sink, kind, refs, timeout=args.timeout)
                used = [b - a for a, b in zip(cpu0, cpu())]
                times = received_at(conn, f"{kind}-{tag}-")
                latencies = [arrived[ref] - times[ref] for ref in refs]
                span = max(arrived.values()) - min(times.values())
                return latencies, span, {
                    "cpu_us_per_message": {k: round(v * 1e6 / count) for k, v in
                                           zip(("web", "workers", "postgres", "server"), used)},
                    "loadavg": round(load0, 2)}

            # warm-up (not timed): caches, connections, the first tasks
            prime("warm", 50)
            sender.post_all(bodies_for(order_events(kind, "warm", 50), 250))
            wait_for(sink, kind, {e["properties"]["ref"] for e in order_events(kind, "warm", 50)}, args.timeout)

            log(f"  {kind}: throughput, {args.events} events")
            first = len(sink.rows())
            spy = start_spy(f"{args.profile}.{kind}.txt", cluster.pid) if args.profile else None
            _lat, span, extra = timed("tp", args.events)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            ours = args.events / span
            sent = [r for r in sink.rows()[first:] if ref_of(kind, r).startswith(f"{kind}-tp-")]
            bare = bare_smtp if kind == "smtp" else bare_http
            base_a, client_cpu_a = bare(sink.port, sent)
            log(f"  {kind}: ours {ours:.0f}/s, bare {base_a:.0f}/s")

            log(f"  {kind}: burst of {args.burst} events")
            latencies, burst_span, burst_extra = timed("burst", args.burst)
            base_b, client_cpu_b = bare(sink.port, sent)
            baseline = (base_a + base_b) / 2
            out = {
                "per_s": round(ours, 1),
                "baseline_per_s": round(baseline, 1),
                "ratio": round(ours / baseline, 3),
                "burst_p50_s": round(percentile(latencies, 0.5), 2),
                "burst_p99_s": round(percentile(latencies, 0.99), 2),
                "burst_max_s": round(max(latencies), 2),
                "burst_per_s": round(args.burst / burst_span, 1),
                "baselines_per_s": [round(base_a, 1), round(base_b, 1)],
                "baseline_client_cpu_us": round((client_cpu_a + client_cpu_b) * 1e6 / (2 * len(sent))),
                "throughput": extra,
                "burst": burst_extra,
                "deliveries": dict(conn.execute("SELECT status, count(*) FROM channels_app_delivery"
                                                " GROUP BY status").fetchall()),
            }
            log(f"  {kind}: {out}")
            conn.execute("DELETE FROM channels_app_delivery WHERE channel_id IN (SELECT id FROM channels_app_channel"
                         " WHERE name = %s) AND status <> 'sent'", [CHANNELS[kind]])  # nothing left for later phases
        return out
    finally:
        sink.stop()


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=3000, help="events (= messages) in the throughput run")
    p.add_argument("--burst", type=int, default=2000)
    p.add_argument("--providers", default="smtp,webhook")
    p.add_argument("--q-workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--quick", action="store_true", help="1,000 events in the throughput run")
    p.add_argument("--resume", action="store_true", help="the events resume waiting runs (see above)")
    p.add_argument("--profile", metavar="PREFIX", help="py-spy the workers in the throughput run (PREFIX.<provider>.txt)")
    p.add_argument("--server-latency-ms", type=float, default=0.0,
                   help="the receiving server answers each message this much later (a relay or API across a network)")
    p.add_argument("--network-rtt-ms", type=float, default=0.0,
                   help="every round trip to the receiving server costs this much (a proxy delays its answers)")
    p.add_argument("--_sink", help=argparse.SUPPRESS)
    p.add_argument("--_seed", help=argparse.SUPPRESS)
    p.add_argument("--_port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.events = min(args.events, 1000)
    return args


def main() -> int:
    args = parse()
    if args._sink:
        run_sink(args._sink, args._port, args._out, args.server_latency_ms / 1000, args.network_rtt_ms / 1000)
        return 0
    if args._seed:
        print(json.dumps(seed(args._seed, args._port, resume=args.resume)))
        return 0
    exit_on_sigterm()
    machine = {"nproc": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    log(f"machine: {machine}")
    kinds = [k.strip() for k in args.providers.split(",") if k.strip()]
    results: dict = {}
    with stack(workers=2, env={SECRET_ENV: "bench-hook-secret"}) as s:
        with s.connect() as conn:
            postmaster = postmaster_pid(conn)
        customers = max(args.events, args.burst, 50)
        with qcluster(s.env, q_workers=args.q_workers, name="dispatch-identify"), s.connect(autocommit=True) as conn:
            Sender(s.port, s.write_key).post_all(bodies_for(identify_events(customers), 250))
            deadline = time.monotonic() + args.timeout
            while conn.execute("SELECT count(*) FROM journeys_event WHERE status = 'pending'").fetchone()[0]:
                if time.monotonic() > deadline:
                    raise RuntimeError("identify events not processed")
                time.sleep(0.2)
        log(f"{customers} customers identified")
        for kind in kinds:
            results[kind] = provider_run(s, postmaster, kind, args)
    figures: dict = {}
    for kind, r in results.items():
        figures.update({f"{kind}_ratio": r["ratio"], f"{kind}_burst_p99_s": r["burst_p99_s"]})
    targets = {f"{kind}_ratio>=0.8": r["ratio"] >= 0.8 for kind, r in results.items()}
    targets.update({f"{kind}_burst_p99<5s": r["burst_p99_s"] < 5 for kind, r in results.items()})
    report("dispatch", **figures, ok=all(targets.values()), targets=targets, events=args.events, burst=args.burst,
           resume=args.resume, server_latency_ms=args.server_latency_ms, network_rtt_ms=args.network_rtt_ms,
           **{kind: r for kind, r in results.items()},
           machine={**machine, "loadavg_end": [round(x, 2) for x in os.getloadavg()]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
