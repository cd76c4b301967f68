"""A cron broadcast over a segment with real processes: the schedules cluster runs the minute tick,
the event workers' cluster starts the runs and sends; three more ticks are forced to run at the
same moment (two without the tick's lease, as if it were broken), and one worker is SIGKILLed in
the middle of a batch of runs. Every customer of the segment gets exactly one run and exactly one
message (counted where the console provider logs what it sends), nobody else gets anything.

Needs PostgreSQL (row locks, several processes on one database).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from journeys.engine.compiled import reset_caches
from journeys.models import BusinessUnit, Customer, JourneyRun, StepExecution, TriggerState
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.proc import BASE_DIR, QCluster, database_url, freeze_mid_task, server_env, wait_until

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(connection.vendor != "postgresql",
                       reason="needs PostgreSQL (row locks, workers and ticks on one database); "
                       "set DATABASE_URL=postgresql://... to run"),
    pytest.mark.django_db(transaction=True),
]

CHANNEL, TEMPLATE = "broadcast-email", "broadcast-news"
PROS, OTHERS = 400, 40
RUN_BATCH = "20"  # runs per q2 task: 20 tasks, so that a worker can be caught in the middle of one
SECRET = "proof-broadcast-" + "k" * 40
FLOW = {
    "trigger_kind": "schedule", "trigger_config": {"cron": "* * * * *", "segment": "profile.plan == 'pro'"},
    "reentry_policy": "once",
    "steps": [{"key": "send", "kind": "send_message", "config": {"channel": CHANNEL, "template": TEMPLATE}},
              {"key": "done", "kind": "goal", "config": {}}],
    "edges": [{"from": "send", "outcome": "next", "to": "done"}],
}
TICK = {
    "lease": "from journeys.engine.scheduler import engine_tick; print(engine_tick())",
    "no-lease": "from journeys.engine.scheduler import schedules_run; print(schedules_run())",
}


def _sent_to(log_path: str) -> Counter:
    """Recipients of every message the console provider sent, from the workers' log."""
    text = Path(log_path).read_text(errors="replace")
    return Counter(re.findall(r"\[email\] to (\S+@example\.com):", text))


def test_cron_broadcast_with_overlapping_ticks_and_a_killed_worker_reaches_everyone_once():
    from channels_app.models import Channel, Delivery, MessageTemplate
    from django_q.models import Schedule, Task

    reset_caches()
    Channel.objects.create(name=CHANNEL, kind="email", provider="console")
    MessageTemplate.objects.create(name=TEMPLATE, subject="News", body="Hello {{ profile.first_name }}")
    unit = BusinessUnit.objects.create(name="Proof", slug="proof")
    version = version_publish(version=version_build(workflow=workflow_create(name="broadcast", business_unit=unit),
                                                    definition=FLOW), reason="test")
    Customer.objects.bulk_create(
        [Customer(external_id=f"p{i}", email=f"p{i}@example.com", traits={"plan": "pro", "first_name": f"P{i}"})
         for i in range(PROS)]
        + [Customer(external_id=f"f{i}", email=f"f{i}@example.com", traits={"plan": "free"}) for i in range(OTHERS)])
    TriggerState.objects.create(version=version, last_tick_at=timezone.now() - timedelta(minutes=3))
    # The engine's clock, on the schedules cluster as `migrate` puts it (transactional tests flush it away).
    Schedule.objects.update_or_create(name="journeys.engine_tick", defaults={
        "func": "journeys.tasks.engine_tick", "schedule_type": Schedule.MINUTES, "minutes": 1, "repeats": -1,
        "next_run": timezone.now(), "cluster": "schedules"})
    url = database_url(connection.settings_dict)
    env = {"SECRET_KEY": SECRET, "ENGINE_RUN_BATCH": RUN_BATCH, "LOG_LEVEL": "INFO"}

    with QCluster(db_url=url, app_name="proof-bc-schedules", workers=1, retry=120, timeout=100,
                  cluster_name="schedules", extra_env=env) as schedules, \
         QCluster(db_url=url, app_name="proof-bc-main", workers=2, retry=10, timeout=8, extra_env=env) as main:
        ticks = [subprocess.Popen([sys.executable, "-W", "ignore", "manage.py", "shell", "-c", TICK[kind]],
                                  cwd=BASE_DIR, env=server_env(url, **env), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for kind in ("no-lease", "no-lease", "lease")]

        # A worker caught inside a page of runs (its runs locked, their steps being written, nothing
        # committed): SIGKILL it, let the rest go on. The batch engine writes a page's rows in one
        # flush at the end, so the locked runs are the wider window to catch it in.
        backend_pid, worker = freeze_mid_task(main, table=JourneyRun._meta.db_table,
                                              modes=("RowShareLock", "RowExclusiveLock"),
                                              ready=lambda: JourneyRun.objects.exists(), timeout=90)
        main.signal(signal.SIGKILL, worker)
        main.signal(signal.SIGCONT)
        for tick in ticks:
            out, err = tick.communicate(timeout=120)
            assert tick.returncode == 0, err[-3000:]

        def done() -> bool:
            return (Delivery.objects.filter(status="sent").count() == PROS
                    and not JourneyRun.objects.exclude(status="completed").exists())

        # A page whose task is not handed out again after the kill costs its lease, not its runs:
        # they are due again when the lease ends (WAKE_LEASE, 2 minutes) and a minute tick claims them.
        wait_until(done, timeout=240, interval=0.5, message=f"every run completed and sent\n{main.output()}")
        # The schedules cluster's own tick (its first comes ~30 s after it started): nothing more to do.
        wait_until(lambda: Task.objects.filter(func="journeys.tasks.engine_tick", cluster="schedules").exists(),
                   timeout=90, interval=1, message=f"a tick on the schedules cluster\n{schedules.output()}")
        sent = _sent_to(main.log.name)

    runs = Counter(JourneyRun.objects.values_list("customer__external_id", flat=True))
    assert runs == Counter({f"p{i}": 1 for i in range(PROS)}), "a customer entered twice, or one of the others entered"
    steps = list(StepExecution.objects.values_list("run_id", "step_key", "visit"))
    assert len(steps) == len(set(steps)) == PROS * 2
    deliveries = Counter(Delivery.objects.values_list("customer__external_id", flat=True))
    assert deliveries == Counter({f"p{i}": 1 for i in range(PROS)})
    assert sent == Counter({f"p{i}@example.com": 1 for i in range(PROS)}), "a message was sent twice (or not at all)"
    # Work went to the event workers; only the schedule itself ran on the schedules cluster.
    clusters = set(Task.objects.filter(func="journeys.tasks.runs_wake").values_list("cluster", flat=True))
    assert clusters == {"journeys"}
    assert Task.objects.filter(func="journeys.tasks.runs_wake").count() >= PROS // int(RUN_BATCH)
    assert backend_pid and worker
