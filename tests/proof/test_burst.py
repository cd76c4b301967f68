"""A burst of events: all processed, and the workers' memory does not grow with the burst.

A burst of N events, then of 4N, is stored through the event API (with the ORM broker as
in production: each request's tasks are written in its transaction) while no worker runs;
then a fresh `manage.py qcluster` (production settings, DEBUG off) drains it. The resident
memory of the whole cluster (guard, pusher, monitor, workers; from /proc) is sampled all
along. Every event must end processed, with its workflow's steps done once, and the peak
memory for 4N must stay within a small margin of the peak for N: nothing held per event
(the queue prefetch, the sweeper and the scheduler all work in bounded pages).

PostgreSQL only: real worker processes on the test database.
"""

from __future__ import annotations

import time

from django.db import connection

from journeys.choices import EventStatus
from journeys.engine.compiled import reset_caches
from journeys.models import BusinessUnit, Event, JourneyRun, StepExecution
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.marks import on_postgres
from tests.proc import PeakRss, QCluster, database_url, wait_until

pytestmark = on_postgres("real worker processes on the test database")

N = 1250
MB = 1024 * 1024
NAMES = ["Product Viewed", "Page Viewed", "Cart Viewed", "Search Performed", "Signed In",
         "Feature Used", "Video Played", "Coupon Applied", "Product Added", "Order Completed"]
FLOW = {  # one in ten events (Order Completed) runs a workflow: condition -> profile update -> goal
    "trigger_event": "Order Completed",
    "reentry_policy": "always",
    "allow_concurrent_runs": True,
    "steps": [
        {"key": "check", "kind": "condition", "config": {"rule": "event.properties.n >= 0"}},
        {"key": "count", "kind": "update_profile", "config": {"variables": {"n": {"rule": "event.properties.n"}}}},
        {"key": "done", "kind": "goal", "config": {"name": "ordered"}},
    ],
    "edges": [{"from": "check", "outcome": "yes", "to": "count"}, {"from": "count", "outcome": "next", "to": "done"}],
}


def _burst(api, start: int, count: int) -> None:
    for first in range(start, start + count, 500):
        batch = [{"type": "track", "userId": f"b{i % 700}", "event": NAMES[i % 10], "messageId": f"burst-{i}",
                  "properties": {"n": i}} for i in range(first, min(first + 500, start + count))]
        response = api.post("batch", {"batch": batch})
        assert response.status_code == 200, response.content


def _drain(name: str, expected: int) -> tuple[PeakRss, float]:
    from django_q.models import OrmQ

    url = database_url(connection.settings_dict)
    with QCluster(db_url=url, app_name=f"proof-burst-{name}", workers=2, retry=120, timeout=100,
                  extra_env={"DEBUG": "0", "LOG_LEVEL": "WARNING"}) as cluster:
        began = time.monotonic()
        with PeakRss(cluster.pgid) as rss:
            wait_until(lambda: Event.objects.filter(status=EventStatus.PROCESSED, name__in=NAMES).count() == expected
                       and not OrmQ.objects.exists(), timeout=120, interval=0.25,
                       message=f"{expected} events processed\n{cluster.output()}")
        took = time.monotonic() - began
    wait_until(lambda: not _backends(f"proof-burst-{name}"), timeout=20, message="worker connections to close")
    return rss, took


def _backends(app_name: str) -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app_name])
        return cur.fetchone()[0]


def test_a_burst_is_all_processed_and_worker_memory_does_not_grow_with_its_size(api, orm_broker):
    reset_caches()
    unit = BusinessUnit.objects.create(name="Burst", slug="burst")
    version_publish(version=version_build(workflow=workflow_create(name="burst", business_unit=unit), definition=FLOW),
                    reason="test")

    _burst(api, 0, N)
    small, small_s = _drain("n", N)
    _burst(api, N, 4 * N)
    big, big_s = _drain("4n", 5 * N)

    assert not Event.objects.exclude(status=EventStatus.PROCESSED).exists(), "an event failed or was left pending"
    orders = 5 * N // 10
    assert JourneyRun.objects.filter(status="completed").count() == orders
    steps = list(StepExecution.objects.values_list("run_id", "step_key", "visit"))
    assert len(steps) == len(set(steps)) == 3 * orders
    growth = big.peak / small.peak
    print(f"N={N}: {N / small_s:.0f} events/s, peak RSS {small.peak / MB:.0f} MB (largest process "
          f"{small.peak_process / MB:.0f} MB); 4N: {4 * N / big_s:.0f} events/s, peak {big.peak / MB:.0f} MB "
          f"({big.peak_process / MB:.0f} MB); growth x{growth:.2f}")
    # Four times the events may not cost more than 15% more memory (page cache noise, a worker
    # respawned mid-run); anything kept per event would show as x2 or more.
    assert growth < 1.15, f"worker memory grew with the burst: {small.peak / MB:.0f} MB -> {big.peak / MB:.0f} MB"
    # The largest process (a worker) is the one a per-event leak would show in first.
    assert big.peak_process - small.peak_process < 12 * MB, (small.peak_process / MB, big.peak_process / MB)
    assert big.peak_process < 300 * MB
