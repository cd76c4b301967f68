"""A cron broadcast at scale, and what the minute tick costs when nothing is due.

    .venv/bin/python bench/broadcast.py [--customers 100000] [--q-workers 2] [--idle-ticks 5] [--split] [--tag] [--hook] [--stage] [--best] [--move]
    .venv/bin/python bench/broadcast.py --customers 1000000

A private PostgreSQL (bench/common.py), production settings, the ORM broker. Customers are
loaded with INSERT ... SELECT FROM generate_series (not through the API): 10% have
plan = 'pro', each has a signup_date whose anniversary is 30 to 330 days away, in one of four
timezones. Two workflows are live from the start: an anniversary (date trigger on
signup_date, 09:00 local) and a monthly cron over the pro segment; neither has anything due.

1. Idle tick, base size (N/10 customers) then full size (N): after the first ticks have
   computed every customer's next anniversary (reported as `prepare_s`), `engine_tick` is
   called directly `--idle-ticks` times after one warm-up call (at a minute other than :00,
   so the hourly refreshes are not in it); the slowest call is the figure. Cost = CPU of the
   tick process plus its PostgreSQL backend (median call); ratio = cost at N / cost at N/10:
   the tick's cost must follow what is due, not the number of customers.
2. Broadcast: a cron workflow (`* * * * *`) over `profile.plan == 'pro'` (re-entry once) with
   one send_message through the console provider goes live; a real qcluster (Q_WORKERS
   workers) is running; ticks are called until the moment's audience is enrolled. Enrolled
   and sent per second = audience / (tick start -> last delivery sent). `enrolled_per_s` is
   the tick's enrolment alone (runs inserted, start tasks queued); sending is
   channels_app's dispatch, measured as it is.

`--split` puts an A/B experiment_split (50/50) in front of the send and `--tag` an update_profile
(a counter rule) after it, `--hook` a webhook step (a signed POST to a local HTTP server, the
bench/dispatch.py sink) before it, `--stage` a set_stage at the end, `--move` a start_workflow after
that (each customer moved to a follow-up journey that completes at once), and `--best` sends with
send_best_channel (the channel and time chosen per customer) instead of send_message: the steps a
real campaign has; each is checked (one assignment, a count of one per customer, one POST per customer with its
own idempotency key, one stage transition per customer).

Targets: >= 5,000 enrolled and sent per second; idle tick < 1 s at 1,000,000 customers;
cost at N no more than 2x the cost at N/10.

Last stdout line: {"bench": "broadcast", "enrolled_and_sent_per_s": ..., "idle_tick_ms": ..., "tick_ratio": ..., ...}
"""

from __future__ import annotations

import argparse
import atexit
import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dispatch import SECRET_ENV, Sink  # noqa: E402  (the local HTTP server for --hook)
from common import (  # noqa: E402
    PYTHON,
    ROOT,
    exit_on_sigterm,
    loadavg,
    log,
    manage,
    postgres,
    postmaster_pid,
    qcluster,
    report,
    server_env,
    tree_cpu,
)

SEED = """
from channels_app.models import Channel, MessageTemplate
from journeys.models import BusinessUnit
from journeys.services.workflows import version_build, version_publish, workflow_create
Channel.objects.create(name="news", kind="email", provider="console")
MessageTemplate.objects.create(name="news", subject="News for {{ profile.first_name }}", body="Hello {{ profile.first_name }}")
unit = BusinessUnit.objects.create(name="Bench", slug="bench")
def live(name, definition):
    version_publish(version=version_build(workflow=workflow_create(name=name, business_unit=unit), definition=definition),
                    reason="bench")
live("anniversary", {"trigger_kind": "date_attribute", "reentry_policy": "always",
                     "trigger_config": {"attribute": "signup_date", "at": "09:00"},
                     "steps": [{"key": "done", "kind": "goal", "config": {}}]})
live("monthly", {"trigger_kind": "schedule", "reentry_policy": "always",
                 "trigger_config": {"cron": "0 3 1 * *", "segment": "profile.plan == 'pro'"},
                 "steps": [{"key": "done", "kind": "goal", "config": {}}]})
"""

BROADCAST = """
from journeys.models import BusinessUnit
from journeys.services.workflows import version_build, version_publish, workflow_create
flow = {{"trigger_kind": "schedule", "reentry_policy": "once",
        "trigger_config": {{"cron": "* * * * *", "segment": "profile.plan == 'pro'"}},
        "steps": [{{"key": "send", "kind": "send_message", "config": {{"channel": "news", "template": "news"}}}},
                  {{"key": "done", "kind": "goal", "config": {{}}}}],
        "edges": [{{"from": "send", "outcome": "next", "to": "done"}}]}}
if {split!r}:  # an A/B test in front of the send: experiment_split -> one send_message per arm
    from experiments.services.experiments import experiment_create, experiment_start
    experiment_start(experiment=experiment_create(key="news-ab", name="News A/B", goal_event="Order Completed",
                                                  mode="bandit" if {bandit!r} else "fixed",
                                                  arms=[{{"name": "control", "control": True}}, {{"name": "b"}}]))
    flow["steps"] = [{{"key": "split", "kind": "experiment_split", "config": {{"experiment": "news-ab"}}}},
                     {{"key": "send", "kind": "send_message", "config": {{"channel": "news", "template": "news"}}}},
                     {{"key": "send_b", "kind": "send_message", "config": {{"channel": "news", "template": "news"}}}},
                     {{"key": "done", "kind": "goal", "config": {{}}}}]
    flow["edges"] = [{{"from": "split", "outcome": "control", "to": "send"}}, {{"from": "split", "outcome": "b", "to": "send_b"}},
                     {{"from": "send", "outcome": "next", "to": "done"}}, {{"from": "send_b", "outcome": "next", "to": "done"}}]
if {best!r}:  # the channel chosen per customer (history, consent, caps), sent now
    flow["steps"] = [{{**s, "kind": "send_best_channel", "config": {{"template": "news", "channels": ["news"],
                                                                   "send_time": "now"}}}}
                     if s["kind"] == "send_message" else s for s in flow["steps"]]
if {hook!r}:  # a webhook call (e.g. to a CRM) before everything else
    from channels_app.models import Channel
    Channel.objects.create(name="crm", kind="webhook", provider="webhook", breaker_threshold=50,
                           settings={{"url": "{hook_url}", "secret_env": "{secret_env}", "timeout": 30}})
    flow["steps"].insert(0, {{"key": "hook", "kind": "webhook", "config": {{"channel": "crm", "payload": {{
        "plan": "{{{{ profile.plan }}}}", "name": "{{{{ profile.first_name }}}}"}}}}}})
    flow["edges"].insert(0, {{"from": "hook", "outcome": "next", "to": flow["steps"][1]["key"]}})
if {tag!r}:  # then a profile change after the send (update_profile: "newsletter_at", a counter rule)
    flow["steps"].append({{"key": "tag", "kind": "update_profile", "config": {{"traits": {{
        "newsletters": {{"rule": "coalesce(profile.newsletters, 0) + 1"}}, "last_newsletter": "news"}}}}}})
    flow["edges"] = [e if e["to"] != "done" else {{**e, "to": "tag"}} for e in flow["edges"]]
    flow["edges"].append({{"from": "tag", "outcome": "next", "to": "done"}})
if {stage!r}:  # last, a lifecycle stage (set_stage: a transition and Stage Left/Entered events each)
    from journeys.models import LifecycleStage
    LifecycleStage.objects.create(key="reader", name="Newsletter reader", order=9)
    flow["steps"].append({{"key": "stage", "kind": "set_stage", "config": {{"stage": "reader"}}}})
    flow["edges"] = [e if e["to"] != "done" else {{**e, "to": "stage"}} for e in flow["edges"]]
    flow["edges"].append({{"from": "stage", "outcome": "next", "to": "done"}})
if {move!r}:  # last, a move to a follow-up journey (start_workflow, exit_current): its first step runs at once
    version_publish(version=version_build(workflow=workflow_create(name="followup", business_unit=BusinessUnit.objects.get()),
                    definition={{"trigger_kind": "event", "trigger_event": "Never", "reentry_policy": "once",
                                "steps": [{{"key": "done", "kind": "goal", "config": {{}}}}]}}), reason="bench")
    flow["steps"] = [s for s in flow["steps"] if s["key"] != "done"]  # the move ends the run
    flow["steps"].append({{"key": "move", "kind": "start_workflow", "config": {{"workflow": "followup", "exit_current": True}}}})
    flow["edges"] = [e if e["to"] != "done" else {{**e, "to": "move"}} for e in flow["edges"]]
version_publish(version=version_build(workflow=workflow_create(name="broadcast", business_unit=BusinessUnit.objects.get()),
                                      definition=flow), reason="bench")
"""

# Ticks until there is nothing left to prepare (date moments) or to broadcast; prints one JSON line.
TICKS = """
import json, os, time
from datetime import timedelta
from django.utils import timezone
from journeys.engine.scheduler import engine_tick
from journeys.models import DateTriggerStale, TriggerState
mode, count = {mode!r}, {count}
out = []
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("SELECT pg_backend_pid()")
    backend = cursor.fetchone()[0]
def db_cpu():
    # CPU seconds of this session's PostgreSQL backend (same machine): what the tick cost the database.
    # /proc/<pid>/schedstat counts nanoseconds; /proc/<pid>/stat counts 10 ms clock ticks, too coarse
    # for an idle tick whose backend spends ~2-10 ms (a median of 5 then flips between 0 and 10 ms).
    try:
        return int(open(f"/proc/{{backend}}/schedstat").read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = open(f"/proc/{{backend}}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0
if mode == "idle":
    engine_tick(now=timezone.now() + timedelta(minutes=1))  # warm-up: compiled versions, connection
def now():
    moment = timezone.now()
    return moment + timedelta(minutes=1) if moment.minute == 0 else moment  # not the hourly stage refresh
while True:
    began, cpu, db = time.perf_counter(), time.process_time(), db_cpu()
    result = engine_tick(now=now())
    out.append({{"ms": (time.perf_counter() - began) * 1000, "cpu_ms": (time.process_time() - cpu) * 1000,
                 "db_cpu_ms": (db_cpu() - db) * 1000, "result": result, "t": time.time()}})
    if mode == "idle" and len(out) >= count:
        break
    if mode == "prepare" and not DateTriggerStale.objects.exists() and len(out) >= 2:
        break
    if mode == "broadcast" and not TriggerState.objects.filter(broadcast_at__isnull=False).exists() and len(out) >= 1:
        break
print(json.dumps(out, default=str))
"""


def shell(code: str, env: dict) -> str:
    done = subprocess.run([str(PYTHON), "manage.py", "shell", "-c", code], env=env, cwd=ROOT, check=True,
                          stdout=subprocess.PIPE, text=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def ticks(env: dict, mode: str, count: int = 1) -> list[dict]:
    return json.loads(shell(TICKS.format(mode=mode, count=count), env))


def load_customers(url: str, first: int, last: int) -> float:
    """Customers first..last: 10% pro, anniversaries 30-330 days from today, four timezones."""
    began = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            INSERT INTO journeys_customer (external_id, email, phone, timezone, locale, traits, first_seen, last_seen,
                                           last_engaged_at, stage, merged_into_id, created_at, updated_at)
            SELECT 'c' || g, 'c' || g || '@example.com', '',
                   (ARRAY['UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Tokyo'])[1 + g %% 4], '',
                   jsonb_build_object(
                       'plan', CASE WHEN g %% 10 = 0 THEN 'pro' ELSE 'free' END,
                       'first_name', 'C' || g,
                       'signup_date', to_char(make_date(2015 + (g %% 8)::int,
                                                        extract(month FROM d)::int,
                                                        least(extract(day FROM d)::int, 28)), 'YYYY-MM-DD')),
                   now(), now(), NULL, '', NULL, now(), now()
            FROM generate_series(%s::bigint, %s::bigint) AS g,
                 LATERAL (SELECT current_date + (30 + (g %% 300))::int AS d) AS days
        """, [first, last])
        conn.execute("ANALYZE journeys_customer")
    return time.monotonic() - began


def idle(env: dict, count: int) -> dict:
    runs = ticks(env, "idle", count)
    assert all(not r["result"].get("date") and not r["result"].get("schedule") for r in runs), runs
    times = sorted(r["ms"] for r in runs)
    costs = sorted(r["cpu_ms"] + r["db_cpu_ms"] for r in runs)
    return {"slowest_ms": round(times[-1], 1), "median_ms": round(times[len(times) // 2], 1),
            "cost_ms": round(costs[len(costs) // 2], 1), "worst_cost_ms": round(costs[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--q-workers", type=int, default=2)
    parser.add_argument("--idle-ticks", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds to wait for the broadcast")
    parser.add_argument("--split", action="store_true",
                        help="an experiment_split (A/B, 50/50) in front of the send: each customer assigned once")
    parser.add_argument("--bandit", action="store_true",
                        help="with --split: the experiment is a bandit (weights updated every 100 assignments)")
    parser.add_argument("--tag", action="store_true",
                        help="an update_profile after the send (a counter rule): each customer's count goes to 1")
    parser.add_argument("--best", action="store_true",
                        help="send with send_best_channel (channel chosen per customer) instead of send_message")
    parser.add_argument("--stage", action="store_true",
                        help="a set_stage at the end: each customer moved (one transition) once")
    parser.add_argument("--move", action="store_true",
                        help="a start_workflow at the end: each customer moved once to a follow-up journey, which completes")
    parser.add_argument("--hook", action="store_true",
                        help="a webhook step (to a local HTTP server) before the send: one POST per customer")
    args = parser.parse_args()
    exit_on_sigterm()
    n, base = args.customers, max(1, args.customers // 10)
    load0 = loadavg()
    problems: list[str] = []

    with postgres() as url:
        env = server_env(url)
        log("migrating")
        manage("migrate", "--noinput", "-v", "0", env=env)
        log(f"loading {base:,} customers")
        load_s = load_customers(url, 1, base)
        shell(SEED, env)  # published after the first customers exist: the first tick prepares them
        began = time.monotonic()
        ticks(env, "prepare")
        prepare_base_s = time.monotonic() - began
        idle_base = idle(env, args.idle_ticks)
        log(f"{base:,} customers (loaded in {load_s:.1f} s, prepared in {prepare_base_s:.1f} s): idle tick {idle_base}")

        log(f"loading {n - base:,} more customers (the anniversary workflow is live: the database trigger queues them)")
        load_s += load_customers(url, base + 1, n)
        began = time.monotonic()
        ticks(env, "prepare")
        prepare_s = time.monotonic() - began
        idle_full = idle(env, args.idle_ticks)
        log(f"{n:,} customers (prepared the new ones in {prepare_s:.1f} s): idle tick {idle_full}")
        with psycopg.connect(url) as conn:
            due_rows = conn.execute("SELECT count(*) FROM journeys_datetriggerdue").fetchone()[0]
        if due_rows != n:
            problems.append(f"{due_rows} anniversary moments for {n} customers")

        sink = Sink("webhook") if args.hook else None
        if sink is not None:
            atexit.register(sink.stop)
        if sink is not None:
            env[SECRET_ENV] = "bench-hook-secret"
        shell(BROADCAST.format(split=args.split, bandit=args.bandit, tag=args.tag, hook=args.hook, stage=args.stage, best=args.best, move=args.move, secret_env=SECRET_ENV,
                               hook_url=f"http://127.0.0.1:{sink.port}/hooks/crm" if sink else ""), env)
        per_customer = 2 if args.hook else 1  # deliveries: the webhook call and the email
        # As `make run`: the event workers, and the schedules cluster (its minute tick shares the work
        # under the lease; its deliveries tick re-sends what a timed-out task left).
        with qcluster(env, q_workers=args.q_workers, name="broadcast") as cluster, \
                qcluster(env, q_workers=1, name="broadcast-schedules", cluster_name="schedules"), \
                psycopg.connect(url, autocommit=True) as conn:
            time.sleep(3)  # the cluster is up before the tick
            audience = conn.execute("SELECT count(*) FROM journeys_customer WHERE traits ->> 'plan' = 'pro'").fetchone()[0]
            log(f"broadcast to {audience:,} customers, {args.q_workers} workers")
            postmaster = postmaster_pid(conn)
            cpu0 = tree_cpu(cluster.pid) + tree_cpu(postmaster)
            tick_runs = ticks(env, "broadcast")
            # From the first tick's start (in production the tick runs inside the schedules cluster,
            # already started; this bench starts a process for it, ~2-3 s that are not the tick's).
            start = tick_runs[0]["t"] - tick_runs[0]["ms"] / 1000
            enrolled_s = tick_runs[-1]["t"] - start
            enrolled = conn.execute("SELECT count(*) FROM journeys_journeyrun WHERE workflow_id = "
                                    "(SELECT id FROM journeys_workflow WHERE name = 'broadcast')").fetchone()[0]
            deadline = time.monotonic() + args.timeout
            started_at = None
            while True:
                sent = conn.execute("SELECT count(*) FROM channels_app_delivery WHERE status = 'sent'").fetchone()[0]
                if started_at is None and not conn.execute(
                        "SELECT EXISTS (SELECT 1 FROM journeys_journeyrun WHERE status IN ('waiting', 'active'))").fetchone()[0]:
                    started_at = conn.execute("SELECT extract(epoch FROM max(created_at)) FROM channels_app_delivery"
                                              ).fetchone()[0]
                if sent >= per_customer * audience or time.monotonic() > deadline or cluster.poll() is not None:
                    break
                time.sleep(0.5)
            cpu = tree_cpu(cluster.pid) + tree_cpu(postmaster) - cpu0
            if sink is not None:
                time.sleep(0.5)  # the sink writes what it received every 0.1 s
                posts = sink.rows()
                sink.stop()
                hooked = (len(posts), len({row["headers"].get("Idempotency-Key") for row in posts}))
            last = conn.execute("SELECT extract(epoch FROM max(sent_at)) FROM channels_app_delivery").fetchone()[0]
            runs = conn.execute("SELECT count(*), count(DISTINCT customer_id) FROM journeys_journeyrun"
                                " WHERE workflow_id = (SELECT id FROM journeys_workflow WHERE name = 'broadcast')").fetchone()
            deliveries = conn.execute("SELECT count(*), count(DISTINCT customer_id) FROM channels_app_delivery").fetchone()
            tasks = conn.execute("SELECT count(*) FROM django_q_task WHERE func = 'journeys.tasks.runs_wake'").fetchone()[0]
            assigned = conn.execute("SELECT count(*), count(DISTINCT customer_id) FROM experiments_assignment").fetchone()
            staged = conn.execute("SELECT count(*), count(DISTINCT customer_id) FROM journeys_stagetransition"
                                  " WHERE to_stage = 'reader'").fetchone()
            followed = conn.execute(
                "SELECT count(*) FILTER (WHERE r.status = 'completed'), count(DISTINCT r.customer_id) FROM journeys_journeyrun r"
                " JOIN journeys_workflow w ON w.id = r.workflow_id WHERE w.name = 'followup'").fetchone()
            tagged = conn.execute("SELECT count(*) FROM journeys_customer WHERE traits -> 'newsletters' = '1'").fetchone()[0]
            slowest_task = conn.execute("SELECT extract(epoch FROM max(stopped - started)) FROM django_q_task"
                                        " WHERE func = 'journeys.tasks.runs_wake'").fetchone()[0]
    sent_s = float(last or time.time()) - start
    started_s = float(started_at or time.time()) - start
    if enrolled != audience or runs != (audience, audience):
        problems.append(f"audience {audience}, enrolled {enrolled}, runs {runs}")
    if args.split and assigned != (audience, audience):
        problems.append(f"audience {audience}, assignments {assigned}")
    if args.tag and tagged != audience:
        problems.append(f"audience {audience}, profiles counted once {tagged}")
    if args.stage and staged != (audience, audience):
        problems.append(f"audience {audience}, stage transitions {staged}")
    if args.move and followed != (audience, audience):
        problems.append(f"audience {audience}, follow-up runs (completed, distinct customers) {followed}")
    if args.hook and (hooked[0] < audience or hooked[1] != audience):  # a retried POST repeats its key
        problems.append(f"audience {audience}, webhook posts (all, distinct keys) {hooked}")
    if sent < per_customer * audience or deliveries != (per_customer * audience, audience):
        problems.append(f"audience {audience}, sent {sent}, deliveries {deliveries}")
    # The tick's cost (CPU of the tick and of its PostgreSQL session, median of the calls) at N vs N/10;
    # wall time on a shared machine mostly measures the other processes.
    ratio = idle_full["cost_ms"] / max(idle_base["cost_ms"], 0.1)
    rate = round(audience / sent_s) if sent_s > 0 else None
    for problem in problems:
        log(f"FAIL {problem}")
    log(f"enrolled {enrolled:,} in {enrolled_s:.1f} s by {len(tick_runs)} tick(s); all runs done (messages recorded) "
        f"after {started_s:.1f} s, all sent after {sent_s:.1f} s "
        f"({tasks} start tasks); load {load0} -> {loadavg()}")
    report(
        "broadcast",
        enrolled_and_sent_per_s=rate,
        idle_tick_ms=idle_full["slowest_ms"],
        tick_ratio=round(ratio, 2),
        customers=n,
        audience=audience,
        enrolled_per_s=round(enrolled / enrolled_s) if enrolled_s > 0 else None,
        enrolled_and_started_per_s=round(audience / started_s) if started_s > 0 else None,
        # the cluster, PostgreSQL and the tick itself (its process: the calls, not Django's start-up)
        cpu_us_per_message=round((cpu + sum(r["cpu_ms"] for r in tick_runs) / 1000) * 1e6 / audience) if audience else None,
        tick_cpu_ms=round(sum(r["cpu_ms"] for r in tick_runs)),
        idle_tick_ms_base=idle_base["slowest_ms"],
        idle_tick_median_ms=idle_full["median_ms"],
        idle_tick_cost_ms=idle_full["cost_ms"],
        idle_tick_cost_ms_base=idle_base["cost_ms"],
        base_customers=base,
        prepare_s=round(prepare_s, 1),
        prepare_base_s=round(prepare_base_s, 1),
        load_s=round(load_s, 1),
        start_tasks=tasks,
        slowest_start_task_s=round(float(slowest_task or 0), 1),
        q_workers=args.q_workers,
        split=args.split,
        bandit=args.bandit,
        tag=args.tag,
        hook=args.hook,
        stage=args.stage,
        best=args.best,
        move=args.move,
        loadavg=load0,
        ok=not problems and (rate or 0) >= 5000 and idle_full["slowest_ms"] < 1000 and ratio <= 2,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
