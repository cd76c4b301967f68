"""The Redis broker is down: work already committed is answered as done, and the sweepers do it.

Events, deliveries, jobs and cases are rows first (the outbox); the task sent after the commit
only makes them go sooner. A broker that refuses the task must not turn a stored event into an
HTML 500, which a client retries (without a messageId: stored and processed twice).
"""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from django.utils import timezone

from journeys.choices import EventStatus
from journeys.engine.processor import events_sweep
from journeys.models import Customer, Event, Job, JobStatus
from tests.factories import live_workflow

pytestmark = pytest.mark.django_db(transaction=True)  # the enqueue runs on the request's real commit

COUNTER = {
    "trigger_event": "Order Completed",
    "steps": [{"key": "count", "kind": "update_profile",
               "config": {"traits": {"orders_seen": {"rule": "coalesce(profile.orders_seen, 0) + 1"}}}}],
    "edges": [],
}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker_down(settings, monkeypatch):
    """django-q2 on its Redis broker, pointed at a port nobody listens on: every enqueue raises
    redis' ConnectionError. Yields a function that brings the (inline) queue back."""
    from django_q.conf import Conf

    url = f"redis://127.0.0.1:{_closed_port()}/0"
    inline = dict(settings.Q_CLUSTER)
    settings.Q_CLUSTER = {**{k: v for k, v in inline.items() if k not in ("sync", "orm")}, "redis": url}
    monkeypatch.setattr(Conf, "SYNC", False)
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", url)

    def back() -> None:
        settings.Q_CLUSTER = inline
        monkeypatch.undo()

    return back


def test_a_batch_stored_while_the_broker_is_down_is_a_200_and_the_sweep_processes_it_once(api, broker_down, caplog):
    # given a live workflow counting orders, and a Redis broker that refuses every task
    live_workflow(name="count orders", definition=COUNTER)
    batch = {"batch": [{"type": "track", "userId": "u1", "event": "Order Completed"},
                       {"type": "track", "userId": "u2", "event": "Order Completed"}]}

    # when a client sends a batch without messageIds
    response = api.post("batch", batch)

    # then the answer is the normal 200 (the events are stored) and the lost enqueue is logged
    assert response.status_code == 200, response.content
    assert response.json() == {"success": True}
    assert Event.objects.filter(status=EventStatus.PENDING).count() == 2
    assert "enqueue of journeys.tasks.events_process failed after commit" in caplog.text

    # and when the broker is back, the sweeper processes each stored event once
    broker_down()
    Event.objects.update(received_at=timezone.now() - timedelta(seconds=60))
    assert events_sweep() == 2
    assert not Event.objects.filter(status=EventStatus.PENDING).exists()
    assert Event.objects.filter(name="Order Completed").count() == 2
    assert {c.external_id: c.traits["orders_seen"] for c in Customer.objects.all()} == {"u1": 1, "u2": 1}


def test_an_import_stored_while_the_broker_is_down_is_accepted_and_queued_again_by_the_sweep(broker_down):
    # given an import job stored while the broker refuses its task
    from journeys.services.jobs import job_queue, jobs_sweep_stalled

    job = Job.objects.create(kind="export", params={})
    job_queue(job.pk)  # outside a transaction: sent at once, and lost
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED

    # when the broker is back and the sweep runs past the queue's time limit plus its retry delay
    broker_down()
    outcome = jobs_sweep_stalled(now=timezone.now() + timedelta(hours=1))

    # then the job was queued again and ran (it is no longer waiting for a task that never comes)
    assert outcome["requeued"] == 1
    assert Job.objects.get(pk=job.pk).status != JobStatus.QUEUED


def test_a_job_another_task_is_running_is_not_run_again_by_a_second_task(broker_down):
    # given an export job a worker has started (its task was queued again by the sweep meanwhile,
    # because it waited in a long queue past the time limit)
    from journeys.services.jobs import jobs_sweep_stalled, run_job

    job = Job.objects.create(kind="export", params={}, status=JobStatus.RUNNING, started_at=timezone.now())

    # when the second task for it is delivered
    outcome = run_job(job.pk)

    # then it leaves the job to the task running it
    assert outcome == JobStatus.RUNNING
    job.refresh_from_db()
    assert (job.status, job.finished_at) == (JobStatus.RUNNING, None)

    # and a job still queued (its task waits behind others, or was lost: the broker is down) is
    # queued again once per quiet period, not at every sweep
    waiting = Job.objects.create(kind="export", params={"customer_id": 0})
    Job.objects.filter(pk=waiting.pk).update(created_at=timezone.now() - timedelta(hours=2))
    now = timezone.now()
    assert jobs_sweep_stalled(now=now)["requeued"] == 1
    assert jobs_sweep_stalled(now=now + timedelta(seconds=60))["requeued"] == 0
    assert jobs_sweep_stalled(now=now + timedelta(hours=1))["requeued"] == 1
    waiting.refresh_from_db()  # the job's page says so; its result (what the API shows) is untouched
    assert waiting.message.startswith("waiting for a worker; queued again at ") and waiting.result == {}
