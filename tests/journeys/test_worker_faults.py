"""Worker faults and concurrency, proved with real processes and real connections (PostgreSQL only).

* A qcluster worker SIGKILLed in the middle of an `events_process` task: the
  task's transaction rolls back, the ORM broker hands the task out again after
  `retry` seconds, and every event ends up processed with each step's side
  effect applied exactly once.
* Several workers on the same pending events / due runs at once: SELECT ... FOR
  UPDATE SKIP LOCKED partitions the rows, nothing is done twice, no
  IntegrityError surfaces.
* Two workers enrolling the same customer at the same moment: the database's
  partial unique index keeps one open run; the loser's insert fails quietly.

SQLite has no row locks and serialises writers, so none of this can be shown
there: the module is skipped unless the database is PostgreSQL.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from journeys.choices import EventStatus, RunStatus
from journeys.engine import processor, runner, scheduler
from journeys.engine.compiled import load_version
from journeys.models import BusinessUnit, Customer, Event, JourneyRun, StepExecution
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.proc import QCluster, database_url, freeze_mid_task, run_in_threads, wait_until

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL (row locks, SKIP LOCKED, other processes on the same database); "
        "set DATABASE_URL=postgresql://... to run",
    ),
    pytest.mark.django_db(transaction=True),
]

ORDER = "Order Completed"
SIGNUP = "Signed Up"
COUNT_RULE = {"rule": "coalesce(profile.orders_seen, 0) + 1"}
QUICK_RETRY = {"retry": 4, "timeout": 30}  # Q_RETRY / Q_TIMEOUT of the qcluster subprocesses


def steps(*items):
    return [dict(zip(("key", "kind", "config"), item)) for item in items]


def edges(*items):
    return [dict(zip(("from", "outcome", "to"), item)) for item in items]


# No delay: an order runs check -> count -> done inside the event's task.
# `count` increments a trait from the profile, so a step that ran twice shows as 2.
ORDER_FLOW = {
    "trigger_event": ORDER,
    "steps": steps(
        ("check", "condition", {"rule": "event.properties.total >= 0"}),
        ("count", "update_profile", {"traits": {"orders_seen": COUNT_RULE},
                                     "variables": {"total": {"rule": "event.properties.total"}}}),
        ("done", "goal", {"name": "ordered"}),
    ),
    "edges": edges(("check", "yes", "count"), ("count", "next", "done")),
}

# A delay parks the run (status waiting, next_wake_at) until the scheduler wakes it.
DELAYED_FLOW = {
    "trigger_event": SIGNUP,
    "steps": steps(
        ("pause", "delay", {"duration": "1h"}),
        ("count", "update_profile", {"traits": {"orders_seen": COUNT_RULE}}),
        ("done", "goal", {"name": "woken"}),
    ),
    "edges": edges(("pause", "next", "count"), ("count", "next", "done")),
}


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def publish():
    unit = BusinessUnit.objects.create(name="Faults", slug="faults")
    counter = {"n": 0}

    def make(definition: dict):
        counter["n"] += 1
        workflow = workflow_create(name=f"faults-{counter['n']}", business_unit=unit)
        return version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")

    return make


def _backends(app_name: str) -> list[int]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            [app_name],
        )
        return [row[0] for row in cur.fetchall()]


@pytest.fixture
def clusters(transactional_db):
    """Start real `manage.py qcluster` processes on the test database; all are SIGKILLed at teardown
    and the test waits for their connections to go, so the database can be flushed."""
    url = database_url(connection.settings_dict)
    started: list[QCluster] = []

    def start(name: str, **kwargs) -> QCluster:
        cluster = QCluster(db_url=url, app_name=f"jfaults-{name}-{len(started)}", **kwargs)
        started.append(cluster)
        return cluster.start()

    yield start
    for cluster in started:
        cluster.close()
    for cluster in started:
        wait_until(lambda c=cluster: not _backends(c.app_name), timeout=15,
                   message=f"connections of {cluster.app_name} to close")


def post_orders(api, numbers, *, per_request: int, event: str = ORDER) -> None:
    """Customers u<n> each send one event, through the HTTP API, `per_request` events a request."""
    numbers = list(numbers)
    for i in range(0, len(numbers), per_request):
        batch = [
            {"type": "track", "userId": f"u{n}", "event": event, "properties": {"total": n},
             "messageId": f"{event}-{n}"}
            for n in numbers[i : i + per_request]
        ]
        response = api.post("batch", {"batch": batch})
        assert response.status_code == 200, response.content


def busy_at_once(timings) -> bool:
    """At least two threads did some of the work, and they were all at it at the same time."""
    busy = [t for t in timings if t[0]]
    return len(busy) >= 2 and max(s for _, s, _ in busy) < min(f for _, _, f in busy)


def assert_each_step_once(n_customers: int, workflow_steps: list[str]) -> None:
    """Every customer ran the flow once: one run, one execution per step, one increment, one
    `Profile Updated` event; and nothing failed anywhere."""
    assert not Event.objects.exclude(status=EventStatus.PROCESSED).exists(), list(
        Event.objects.exclude(status=EventStatus.PROCESSED).values_list("id", "status", "error")[:5]
    )
    runs = list(JourneyRun.objects.values_list("id", "customer__external_id", "status", "error"))
    assert len(runs) == n_customers
    assert Counter(ext for _, ext, _, _ in runs) == Counter(f"u{n}" for n in range(n_customers))
    assert {(s, e) for _, _, s, e in runs} == {(RunStatus.COMPLETED, "")}

    rows = list(StepExecution.objects.values_list("run_id", "step_key", "visit", "outcome", "finished_at"))
    assert len(rows) == len(set((r, k, v) for r, k, v, _, _ in rows)) == n_customers * len(workflow_steps)
    per_run: dict[int, list[str]] = {}
    for run_id, key, _visit, _outcome, finished_at in rows:
        assert finished_at is not None
        per_run.setdefault(run_id, []).append(key)
    assert all(sorted(keys) == sorted(workflow_steps) for keys in per_run.values())

    traits = Customer.objects.filter(external_id__startswith="u").values_list("traits", flat=True)
    counts = Counter(t.get("orders_seen") for t in traits)
    assert counts == {1: n_customers}, f"orders_seen per customer: {counts}"
    updates = Counter(Event.objects.filter(name="Profile Updated").values_list("customer__external_id", flat=True))
    assert updates == Counter(f"u{n}" for n in range(n_customers)), "a profile update was recorded twice"
    changes = list(Event.objects.filter(name="Profile Updated").values_list("changes", flat=True))
    assert all(ch == {"orders_seen": [None, 1]} for ch in changes), Counter(map(str, changes))


def all_done(n_orders: int) -> bool:
    """Every order processed, nothing pending, and every django-q task acknowledged (so its
    result, a failure included, has been saved by the cluster's monitor)."""
    from django_q.models import OrmQ

    return (
        Event.objects.filter(name=ORDER, status=EventStatus.PROCESSED).count() == n_orders
        and not Event.objects.filter(status=EventStatus.PENDING).exists()
        and not OrmQ.objects.exists()
    )


def _failed_tasks() -> list:
    from django_q.models import Failure

    return list(Failure.objects.values_list("func", "result"))


# -- 1. a worker killed mid-task ------------------------------------------------------------------


@pytest.mark.parametrize("target", ["whole-cluster", "one-worker"])
def test_worker_killed_mid_task_the_events_are_processed_and_no_step_runs_twice(
    target, publish, api, orm_broker, clusters
):
    """SIGKILL a worker while its `events_process` task is half done; every event still ends processed once.

    How it is made faithful:
    - Events enter through the HTTP API (`/v1/batch`); with the ORM broker (settings as in production,
      not the tests' sync mode) each request writes its Event rows and its django-q task row in one
      transaction. Four requests of 120 orders -> four tasks of 120 events.
    - A real `manage.py qcluster` (config.settings, one worker) works them, with Q_RETRY=4 so the killed
      task is handed out again quickly, and a generous Q_TIMEOUT: on a loaded machine a task that hit
      django-q's timeout would be acked as failed (ack_failures) and left to the once-a-minute sweeper.
      (A task redelivered while it still runs is harmless, and is exercised here too.)
      Its connections carry PGAPPNAME, so pg_locks shows when the worker has inserted JourneyRun
      rows that are not committed yet (the batch enrols first and writes its step rows, profiles
      and runs' states at the end), while earlier tasks are committed: that is "mid-task". The
      worker is frozen (SIGSTOP), the transaction checked to be still open, then SIGKILLed - the
      whole process group (a crashed host), or only the worker process that owns that connection
      (found via /proc; an OOM kill, the cluster respawns the worker).
    - Nothing is mocked or slowed: the window is just a task's own work (120 events x 3 steps, set-based:
      ~0.1-0.3 s).
    - Recovery is the product's: the killed task's OrmQ row is handed out again `retry` seconds
      after it was taken (by a fresh cluster, or by the surviving one).
    """
    n, per_request = 480, 120
    publish(ORDER_FLOW)
    post_orders(api, range(n), per_request=per_request)
    assert Event.objects.filter(status=EventStatus.PENDING).count() == n

    first = clusters("kill", workers=1, **QUICK_RETRY)
    began = time.monotonic()
    backend_pid, worker = freeze_mid_task(
        first, table=JourneyRun._meta.db_table,
        ready=lambda: Event.objects.filter(name=ORDER, status=EventStatus.PROCESSED).exists())
    frozen_processed = Event.objects.filter(name=ORDER, status=EventStatus.PROCESSED).count()
    if target == "whole-cluster":
        first.kill()  # SIGKILL to the whole process group: a crashed host
    else:
        first.signal(signal.SIGKILL, worker)  # only the worker: an OOM kill
    killed_at = time.monotonic()
    # The server notices the dead client and rolls its transaction back.
    wait_until(lambda: backend_pid not in _backends(first.app_name), timeout=15, message="the killed backend to go")

    # The crash left no half-done event: a run, its executions and its profile update exist
    # exactly for the processed orders, nothing for the pending ones.
    processed = Event.objects.filter(name=ORDER, status=EventStatus.PROCESSED).count()
    assert processed == frozen_processed, "the killed task committed some of its work"
    assert 0 < processed < n, f"not killed mid-way: {processed}/{n} processed"
    assert JourneyRun.objects.count() == processed
    assert not JourneyRun.objects.filter(trigger_event__status=EventStatus.PENDING).exists()
    assert StepExecution.objects.count() == 3 * processed
    assert Customer.objects.filter(traits__has_key="orders_seen").count() == processed

    if target == "whole-cluster":
        clusters("restart", workers=1, **QUICK_RETRY)
    else:
        first.signal(signal.SIGCONT)  # the surviving cluster respawns its worker and carries on

    wait_until(lambda: all_done(n), timeout=60, interval=0.2,
               message=f"all events processed and all tasks acknowledged after the kill ({target})")
    recovered = time.monotonic()
    assert_each_step_once(n, ["check", "count", "done"])
    assert {v["total"] for v in JourneyRun.objects.values_list("variables", flat=True)} == set(range(n))
    assert _failed_tasks() == []
    print(f"[{target}] killed after {killed_at - began:.1f}s with {processed}/{n} processed; "
          f"all processed {recovered - killed_at:.1f}s after the kill")


# -- 2. several workers on the same rows (SKIP LOCKED) -------------------------------------------


def test_concurrent_events_process_on_overlapping_ids_processes_each_event_once(publish, api, orm_broker, caplog):
    """Three threads (three connections, like three workers) process overlapping id ranges of the same
    pending events at the same time - what a redelivered task racing the original, or the sweeper
    racing a task, does. SKIP LOCKED gives each event to exactly one of them."""
    n = 150
    publish(ORDER_FLOW)
    post_orders(api, range(n), per_request=75)
    ids = list(Event.objects.filter(name=ORDER, status=EventStatus.PENDING).order_by("id").values_list("id", flat=True))
    assert len(ids) == n

    caplog.set_level(logging.ERROR)
    a, b, c = ids[: n // 3], ids[n // 3 : 2 * n // 3], ids[2 * n // 3 :]
    windows = [a + b, b + c, c + a]  # every event is offered to two workers
    timings = run_in_threads(*[lambda w=w: processor.events_process(event_ids=w) for w in windows])

    assert sum(result for result, _, _ in timings) == n
    assert busy_at_once(timings), f"the workers did not share the work at the same time: {timings}"
    # The Profile Updated events the steps recorded are pending in the outbox; process them too.
    internal = list(Event.objects.filter(status=EventStatus.PENDING).values_list("id", flat=True))
    assert len(internal) == n
    run_in_threads(lambda: processor.events_process(event_ids=internal),
                   lambda: processor.events_process(event_ids=internal[::-1]))
    assert_each_step_once(n, ["check", "count", "done"])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_concurrent_wakeups_resume_each_due_run_once(publish, api, caplog, settings):
    """Three schedulers tick at once over the same due runs: each run is resumed by exactly one.
    (Pages of 50 runs, ENGINE_RUN_BATCH, for 210 runs: so the work is shared.)"""
    settings.ENGINE_RUN_BATCH = 50
    n = 210
    publish(DELAYED_FLOW)
    post_orders(api, range(n), per_request=105, event=SIGNUP)
    processor.events_process(event_ids=list(Event.objects.filter(name=SIGNUP).values_list("id", flat=True)))
    assert JourneyRun.objects.filter(status=RunStatus.WAITING).count() == n

    caplog.set_level(logging.ERROR)
    later = timezone.now() + timedelta(hours=2)
    timings = run_in_threads(*[lambda: scheduler.runs_wake_due(now=later)] * 3)

    assert sum(result for result, _, _ in timings) == n
    assert busy_at_once(timings), f"the schedulers did not share the work at the same time: {timings}"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    internal = list(Event.objects.filter(status=EventStatus.PENDING).values_list("id", flat=True))
    processor.events_process(event_ids=internal)
    assert_each_step_once(n, ["pause", "count", "done"])
    assert set(StepExecution.objects.filter(step_key="pause").values_list("outcome", flat=True)) == {"next"}


def test_two_clusters_with_duplicate_deliveries_process_each_event_once(publish, api, orm_broker, clusters):
    """Two real qclusters (two workers each) and every task delivered twice (the at-least-once broker
    redelivering, e.g. `retry` shorter than the queue wait): each event is still processed once."""
    from django_q.tasks import async_task

    n = 120
    publish(ORDER_FLOW)
    post_orders(api, range(n), per_request=40)
    ids = list(Event.objects.filter(name=ORDER).order_by("id").values_list("id", flat=True))
    for i in range(0, n, 40):  # the duplicate of each request's task
        async_task("journeys.tasks.events_process", ids[i : i + 40], group="events")

    began = time.monotonic()
    a = clusters("dup-a", workers=2, **QUICK_RETRY)
    b = clusters("dup-b", workers=2, **QUICK_RETRY)
    wait_until(lambda: all_done(n), timeout=60, interval=0.2,
               message="all events processed and all tasks acknowledged by two clusters")
    assert_each_step_once(n, ["check", "count", "done"])
    assert _failed_tasks() == [], (a.output(), b.output())
    print(f"[two clusters] all processed in {time.monotonic() - began:.1f}s")


# -- 3. one open run per customer under concurrency -----------------------------------------------


@pytest.fixture
def both_pass_the_entry_check(monkeypatch):
    """Make two enrolments race for real: each waits, after deciding "no open run yet, may enter",
    until the other has decided the same - then both insert. Without this the window between the
    check and the insert is too short to hit reliably; the database constraint must hold either way."""
    barrier = threading.Barrier(2)
    original = runner.entry_refusal
    decisions: list = []

    def entry_refusal(**kwargs):
        refusal = original(**kwargs)
        decisions.append(refusal)
        barrier.wait(timeout=10)
        return refusal

    monkeypatch.setattr(runner, "entry_refusal", entry_refusal)
    return decisions


def test_two_events_enrolling_the_same_customer_at_once_leave_one_open_run(
    publish, api, orm_broker, both_pass_the_entry_check, caplog
):
    """Two workers process two events of one customer at the same moment; the workflow allows
    re-entry but not concurrent runs. Both pass the entry rules; the partial unique index
    (one_open_run_per_customer) lets one insert win, the other enrolment is dropped without error."""
    publish({**DELAYED_FLOW, "reentry_policy": "always"})
    api.post("track", {"userId": "u0", "event": SIGNUP, "messageId": "s1"})
    api.post("track", {"userId": "u0", "event": SIGNUP, "messageId": "s2"})
    first, second = Event.objects.filter(name=SIGNUP).order_by("id").values_list("id", flat=True)

    caplog.set_level(logging.ERROR)
    results = run_in_threads(lambda: processor.events_process(event_ids=[first]),
                             lambda: processor.events_process(event_ids=[second]))

    assert both_pass_the_entry_check == [None, None], "both enrolments must have been allowed to insert"
    assert [r for r, _, _ in results] == [1, 1]
    assert set(Event.objects.values_list("status", flat=True)) == {EventStatus.PROCESSED}
    runs = list(JourneyRun.objects.values_list("status", "trigger_event_id"))
    assert len(runs) == 1 and runs[0][0] == RunStatus.WAITING and runs[0][1] in (first, second)
    assert StepExecution.objects.count() == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_the_same_trigger_enrolled_twice_at_once_makes_one_run(publish, both_pass_the_entry_check):
    """A redelivered task enrolling the same (customer, trigger) as the original, at the same moment,
    in a workflow that allows concurrent runs: run_trigger_unique keeps it to one run."""
    version = load_version(publish({**DELAYED_FLOW, "allow_concurrent_runs": True, "reentry_policy": "always"}).pk)
    customer = Customer.objects.create(external_id="u0", traits={})
    now = timezone.now()

    def enroll():
        return runner.run_enroll(version=version, customer=customer, trigger_key="event:42", now=now)

    results = run_in_threads(enroll, enroll)

    assert both_pass_the_entry_check == [None, None], "both enrolments must have been allowed to insert"
    assert sorted(r is None for r, _, _ in results) == [False, True]
    assert JourneyRun.objects.count() == 1
    assert StepExecution.objects.count() == 1


@pytest.mark.parametrize("to", ["main", "group"])
def test_a_cluster_stopped_by_sigterm_leaves_no_process(clusters, to):
    """docs/SCALING.md's unit (KillMode=mixed) sends SIGTERM to the main process only: the cluster
    stops its own processes and exits within seconds. systemd's default (KillMode=control-group),
    `kill -TERM -- -<pgid>` and supervisord's stopasgroup send it to every process at once: the
    guard used to die asleep in the stop event's wait, and the main process waited for it for ever."""
    cluster = clusters("stop", workers=2)
    wait_until(lambda: "running." in cluster.output(), timeout=60, message="the cluster to start")
    assert len(cluster.pids()) >= 4  # main, guard/pusher/monitor and the workers

    began = time.monotonic()
    cluster.signal(signal.SIGTERM, cluster.pgid if to == "main" else None)
    cluster.proc.wait(timeout=30)

    wait_until(lambda: not cluster.pids(), timeout=10, message="every process of the cluster to exit")
    assert time.monotonic() - began < 30, cluster.output()
    # Signalled alone, the main process stops the others in order; signalled with them, it may
    # find its guard already gone and exit without a word.
    assert to == "group" or "has stopped" in cluster.output(), cluster.output()


def test_a_cluster_whose_idle_workers_were_killed_takes_tasks_again_and_still_stops(
        publish, api, orm_broker, clusters):
    """The OOM killer takes a cluster's idle workers, one of which held the task queue's read lock
    while it waited (django-q2 issue #23: the new workers never took a task again, and SIGTERM no
    longer stopped the cluster). The cluster notices the stuck queue within Q_FREEZE_S, starts its
    workers again on a new queue, every event is processed once, and SIGTERM stops it."""
    n = 240
    publish(ORDER_FLOW)
    cluster = clusters("freeze", workers=2, extra_env={"Q_FREEZE_S": "2"}, **QUICK_RETRY)
    wait_until(lambda: cluster.output().count("ready for work at") == 2, timeout=60, message="two idle workers")
    idle = [int(pid) for pid in re.findall(r"ready for work at (\d+)", cluster.output())]
    for pid in idle:  # both: one of them is waiting inside the queue's read, holding its lock
        cluster.signal(signal.SIGKILL, pid)
    wait_until(lambda: cluster.output().count("after death") == 2, timeout=30, message="both reincarnated")

    post_orders(api, range(n), per_request=120)

    wait_until(lambda: all_done(n), timeout=90, interval=0.2, message="the events processed after the kill")
    assert_each_step_once(n, ["check", "count", "done"])
    assert "the task queue is stuck" in cluster.output() and "carried over" in cluster.output()
    cluster.signal(signal.SIGTERM, cluster.pgid)
    cluster.proc.wait(timeout=30)
    wait_until(lambda: not cluster.pids(), timeout=10, message="every process of the cluster to exit")
    assert "has stopped" in cluster.output(), cluster.output()


def test_sigterm_stops_a_cluster_frozen_by_its_killed_workers(clusters):
    """SIGTERM before the freeze is noticed (Q_FREEZE_S far off): the cluster still stops, where q2
    alone waited forever for workers that could not read their STOP pills."""
    cluster = clusters("frozen-stop", workers=2, extra_env={"Q_FREEZE_S": "600"})
    wait_until(lambda: cluster.output().count("ready for work at") == 2, timeout=60, message="two idle workers")
    for pid in [int(pid) for pid in re.findall(r"ready for work at (\d+)", cluster.output())]:
        cluster.signal(signal.SIGKILL, pid)
    wait_until(lambda: cluster.output().count("after death") == 2, timeout=30, message="both reincarnated")

    cluster.signal(signal.SIGTERM, cluster.pgid)
    cluster.proc.wait(timeout=30)

    wait_until(lambda: not cluster.pids(), timeout=10, message="every process of the cluster to exit")
    assert "has stopped" in cluster.output(), cluster.output()


# -- known bug ------------------------------------------------------------------------------------


def test_two_orders_of_one_customer_in_one_task_both_count(publish, api, orm_broker):
    """Each of two runs applies its increment once: the customer ends with orders_seen == 2."""
    publish({**ORDER_FLOW, "reentry_policy": "always"})
    api.post("batch", {"batch": [
        {"type": "track", "userId": "u0", "event": ORDER, "properties": {"total": i}, "messageId": f"o{i}"}
        for i in range(2)
    ]})
    processor.events_process(event_ids=list(Event.objects.filter(name=ORDER).values_list("id", flat=True)))

    assert JourneyRun.objects.filter(status=RunStatus.COMPLETED).count() == 2
    assert Customer.objects.get(external_id="u0").traits["orders_seen"] == 2
