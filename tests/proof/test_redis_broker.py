"""django-q2 on the Redis broker: a real redis-server, gunicorn and `manage.py qcluster`.

The Redis broker has no acknowledgement: the cluster's pusher pops a task (BLPOP) and it
is gone from Redis, so a task whose worker dies (or that sat in a killed cluster's local
queue) is never handed out again. What makes Redis safe here is the outbox: the Event
rows. The `engine_tick` schedule runs `events_sweep`, which re-finds events still pending
30 s after they were received and processes them; `events_process` takes events with
FOR UPDATE SKIP LOCKED and only while pending, and every side effect is keyed
(StepExecution per run/step/visit, Delivery per idempotency key), so nothing happens twice.

Needs PostgreSQL (row locks, several processes on one database) and redis-server.
"""

from __future__ import annotations

import base64
import http.client
import json
import signal
import time
from collections import Counter

import pytest
from django.db import connection
from django.utils import timezone

from journeys.choices import EventStatus, RunStatus
from journeys.engine.compiled import reset_caches
from journeys.models import BusinessUnit, Customer, Event, JourneyRun, StepExecution
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.proc import (
    QCluster,
    RedisServer,
    WebServer,
    database_url,
    freeze_mid_task,
    in_flight_writes,
    redis_server_missing,
    server_env,
    wait_until,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(connection.vendor != "postgresql",
                       reason="needs PostgreSQL (row locks, web and workers on one database); "
                       "set DATABASE_URL=postgresql://... to run"),
    pytest.mark.skipif(bool(redis_server_missing()), reason=redis_server_missing() or ""),
    pytest.mark.django_db(transaction=True),
]

ORDER = "Order Completed"
CHANNEL, TEMPLATE = "proof-email", "proof-receipt"
STEPS = ["check", "send", "count", "done"]
FLOW = {
    "trigger_event": ORDER,
    "steps": [
        {"key": "check", "kind": "condition", "config": {"rule": "event.properties.seq >= 0"}},
        {"key": "send", "kind": "send_message", "config": {"channel": CHANNEL, "template": TEMPLATE}},
        {"key": "count", "kind": "update_profile",
         "config": {"traits": {"orders_seen": {"rule": "coalesce(profile.orders_seen, 0) + 1"}}}},
        {"key": "done", "kind": "goal", "config": {"name": "ordered"}},
    ],
    "edges": [{"from": "check", "outcome": "yes", "to": "send"}, {"from": "send", "outcome": "next", "to": "count"},
              {"from": "count", "outcome": "next", "to": "done"}],
}


@pytest.fixture
def redis():
    with RedisServer() as server:
        yield server


@pytest.fixture
def stack(redis, transactional_db):
    """A live workflow, gunicorn and (started by the test) qclusters, all on Redis and the test database."""
    from channels_app.models import Channel, MessageTemplate
    from django_q.models import Schedule

    reset_caches()
    Channel.objects.create(name=CHANNEL, kind="email", provider="console")
    MessageTemplate.objects.create(name=TEMPLATE, subject="Thanks", body="Order {{ event.properties.seq }}")
    unit = BusinessUnit.objects.create(name="Proof", slug="proof")
    workflow = workflow_create(name="redis-proof", business_unit=unit)
    version_publish(version=version_build(workflow=workflow, definition=FLOW), reason="test")
    # The engine's clock (a migration makes it; transactional tests flush it away).
    Schedule.objects.update_or_create(name="journeys.engine_tick", defaults={
        "func": "journeys.tasks.engine_tick", "schedule_type": Schedule.MINUTES, "minutes": 1, "repeats": -1,
        "next_run": timezone.now()})
    from tests.factories import make_source

    _source, key = make_source("redis-proof")
    url = database_url(connection.settings_dict)
    env = server_env(url, REDIS_URL=redis.url, PGAPPNAME="proof-redis-web")
    started: list = []

    def cluster(name: str) -> QCluster:
        c = QCluster(db_url=url, app_name=f"proof-redis-{name}", workers=1, retry=5, timeout=30,
                     extra_env={"REDIS_URL": redis.url, "SECRET_KEY": env["SECRET_KEY"]})
        started.append(c)
        return c.start()

    with WebServer(env=env, workers=2, name="proof-redis-web") as web:
        yield {"web": web, "key": key, "cluster": cluster, "redis": redis}
        for c in started:
            c.close()
    reset_caches()

    def gone() -> bool:
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'proof-redis-%%'"
                        " AND datname = current_database()")
            return cur.fetchone()[0] == 0

    wait_until(gone, timeout=20, message="web and worker connections to close")


def _queue_length(redis_url: str) -> int:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_url)
    try:
        return client.llen("django_q:journeys:q")
    finally:
        client.close()


def _assert_each_order_acted_once(n: int) -> None:
    from channels_app.models import Delivery

    assert not Event.objects.exclude(status=EventStatus.PROCESSED).exists(), list(
        Event.objects.exclude(status=EventStatus.PROCESSED).values_list("id", "name", "status", "error")[:5])
    runs = Counter(JourneyRun.objects.values_list("customer__external_id", "status"))
    assert runs == Counter({(f"u{i}", RunStatus.COMPLETED): 1 for i in range(n)})
    steps = list(StepExecution.objects.values_list("run_id", "step_key", "visit"))
    assert len(steps) == len(set(steps)) == n * len(STEPS)
    deliveries = Counter(Delivery.objects.values_list("customer__external_id", flat=True))
    assert deliveries == Counter({f"u{i}": 1 for i in range(n)}), "a message was delivered twice (or not at all)"
    counts = Counter(Customer.objects.filter(external_id__startswith="u").values_list("traits__orders_seen", flat=True))
    assert counts == {1: n}, f"orders_seen per customer: {counts}"


PER_TASK = 100  # events a request and so a task: long enough (set-based, ~0.1-0.3 s) to be caught mid-way


def _post_orders(stack, numbers) -> None:
    """Customer u<i> sends order i; one request of PER_TASK orders -> one task of PER_TASK events."""
    auth = "Basic " + base64.b64encode(f"{stack['key']}:".encode()).decode()
    numbers = list(numbers)
    for start in range(0, len(numbers), PER_TASK):
        body = json.dumps({"batch": [
            {"type": "track", "userId": f"u{i}", "event": ORDER, "properties": {"seq": i}, "messageId": f"o{i}"}
            for i in numbers[start:start + PER_TASK]]})
        conn = http.client.HTTPConnection("127.0.0.1", stack["web"].port, timeout=60)
        conn.request("POST", "/v1/batch", body=body, headers={"Authorization": auth, "Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        conn.close()


def test_redis_broker_processes_posted_events(stack):
    """Events posted to gunicorn are queued on Redis (after commit) and processed by a qcluster."""
    n = 60
    _post_orders(stack, range(n))
    assert _queue_length(stack["redis"].url) >= 1, "the task did not go to Redis"
    assert Event.objects.filter(status=EventStatus.PENDING).count() == n

    worker = stack["cluster"]("plain")
    wait_until(lambda: not Event.objects.filter(status=EventStatus.PENDING).exists()
               and _queue_length(stack["redis"].url) == 0, timeout=45, interval=0.2,
               message=f"events processed from Redis\n{worker.output()}")
    _assert_each_order_acted_once(n)


@pytest.mark.parametrize("target", ["one-worker", "whole-cluster"])
def test_worker_killed_mid_batch_on_redis_the_sweeper_finishes_and_nothing_acts_twice(target, stack):
    """SIGKILL mid-task on Redis: the popped task is lost for good (no ack, no retry), its events
    stay pending in the outbox; the engine_tick schedule's sweeper (events pending > 30 s)
    processes them, and every order still gets exactly one run, one message, one increment."""
    n = 5 * PER_TASK
    _post_orders(stack, range(n))  # 5 tasks on Redis
    posted = time.monotonic()
    first = stack["cluster"]("kill")
    # The batch inserts its runs first and its step rows at the end: uncommitted runs are "mid-task".
    backend_pid, worker = freeze_mid_task(
        first, table=JourneyRun._meta.db_table,
        ready=lambda: Event.objects.filter(name=ORDER, status=EventStatus.PROCESSED).exists())
    if target == "whole-cluster":
        first.kill()  # the local queue of prefetched tasks dies with it
    else:
        first.signal(signal.SIGKILL, worker)
    killed = time.monotonic()
    wait_until(lambda: backend_pid not in [p for p, _ in in_flight_writes(first.app_name, JourneyRun._meta.db_table)],
               timeout=15,
               message="the killed transaction to roll back")
    processed_at_kill = Event.objects.filter(name=ORDER, status=EventStatus.PROCESSED).count()
    assert 0 < processed_at_kill < n
    if target == "whole-cluster":
        stack["cluster"]("restart")
    else:
        first.signal(signal.SIGCONT)  # the guard respawns the worker; the lost task is not redelivered

    wait_until(lambda: Event.objects.filter(name=ORDER, status=EventStatus.PROCESSED).count() == n
               and not Event.objects.filter(status=EventStatus.PENDING).exists()
               and _queue_length(stack["redis"].url) == 0, timeout=75, interval=0.5,
               message=f"the sweeper to process the lost task's events\n{first.output()}")
    _assert_each_order_acted_once(n)
    from django_q.models import Task

    ticks = [t.result for t in Task.objects.filter(func="journeys.tasks.engine_tick", success=True)]
    assert sum(t["swept"] for t in ticks) >= PER_TASK, ticks  # the killed task's events came back this way
    print(f"[{target}] {processed_at_kill}/{n} processed at the kill ({killed - posted:.1f}s after posting); "
          f"all processed {time.monotonic() - killed:.1f}s after the kill")
