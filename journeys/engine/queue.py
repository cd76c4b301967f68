"""Hand work to django-q2 so that nothing is lost between the web and the workers."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import transaction
from django_q.tasks import async_task

BATCH = 200

_collected: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("enqueue_collected", default=None)


@contextmanager
def enqueue_collected() -> Iterator[None]:
    """Within this block `enqueue_events` only collects ids; leaving it enqueues them together
    (one task per BATCH ids instead of one per event), e.g. the `Message Sent` events of a
    batch of deliveries. Each event row is committed by its own caller first: one that
    is never enqueued (the process dies before the end of the block) is an outbox row the
    sweeper processes."""
    token = _collected.set([])
    try:
        yield
    finally:
        ids = _collected.get() or []
        _collected.reset(token)
        enqueue_events(ids)


def _uses_orm_broker() -> bool:
    cluster = settings.Q_CLUSTER
    return "orm" in cluster and not cluster.get("sync")


def enqueue_events(event_ids: list[int]) -> None:
    """Queue processing for freshly stored events.

    With the ORM broker on the same database the task row is written inside the
    caller's transaction: both commit or neither does (an outbox for free).
    With Redis (or sync mode) the task is sent after commit so a worker never
    sees an event that is not stored yet; the sweeper covers a lost send.
    """
    if not event_ids:
        return
    collected = _collected.get()
    if collected is not None:
        collected.extend(event_ids)
        return
    chunks = [event_ids[i : i + BATCH] for i in range(0, len(event_ids), BATCH)]

    def send() -> None:
        for chunk in chunks:  # the event workers' queue, also when stored by a schedule (see enqueue_work)
            async_task("journeys.tasks.events_process", chunk, task_name=None, group="events",
                       cluster=settings.Q_CLUSTER.get("name"))

    if _uses_orm_broker():
        send()
    else:
        transaction.on_commit(send)


def enqueue_work(func: str, *args, group: str) -> None:
    """Queue a task of engine work (e.g. a page of runs to start) for the event workers.

    Named for the main cluster explicitly: the tick runs on the schedules cluster, and a task
    queued there without a cluster name would land on the schedules cluster's own queue. As
    with events: with the ORM broker the task row is written inside the caller's transaction
    (it commits with the rows it is about, or not at all); in sync mode (tests) the task runs
    now, inside it; with Redis it is sent after commit.
    """
    cluster = settings.Q_CLUSTER

    def send() -> None:
        async_task(func, *args, task_name=None, group=group, cluster=cluster.get("name"))

    if cluster.get("sync") or _uses_orm_broker():
        send()
    else:
        transaction.on_commit(send)
