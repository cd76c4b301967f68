"""Hand work to django-q2 so that nothing is lost between the web and the workers."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import transaction
from django_q.tasks import async_task

logger = logging.getLogger(__name__)

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


def task_send(func: str | Callable, *args, **kwargs) -> str | None:
    """`async_task` for work already committed (called after the commit): a broker that is
    down (Redis unreachable) is logged, not raised, because the rows are the outbox and a
    sweeper finds the work again (events_sweep, the deliveries' due sweep, the SLA tick,
    jobs_sweep_stalled). Raising here would answer a 500 for work that is stored, and a client
    that retries would store it twice. In sync mode (tests) the task runs now and errors surface."""
    if settings.Q_CLUSTER.get("sync"):
        return async_task(func, *args, **kwargs)
    try:
        return async_task(func, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any broker failure: the sweepers have the work
        name = func if isinstance(func, str) else getattr(func, "__name__", repr(func))
        logger.warning("queue: enqueue of %s failed after commit (%s: %s); a sweeper will pick the work up",
                       name, type(exc).__name__, exc)
        return None


def task_send_on_commit(func: str | Callable, *args, **kwargs) -> None:
    """Queue a task once the caller's transaction commits (at once outside one), never failing
    the caller for a broker that is down: see `task_send`."""
    transaction.on_commit(lambda: task_send(func, *args, **kwargs))


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

    def send(enqueue: Callable = async_task) -> None:
        for chunk in chunks:  # the event workers' queue, also when stored by a schedule (see enqueue_work)
            enqueue("journeys.tasks.events_process", chunk, task_name=None, group="events",
                    cluster=settings.Q_CLUSTER.get("name"))

    if _uses_orm_broker():
        send()  # inside the transaction: a failure rolls the events back (the API answers 503)
    else:
        transaction.on_commit(lambda: send(task_send))


def enqueue_work(func: str, *args, group: str) -> None:
    """Queue a task of engine work (e.g. a page of runs to start) for the event workers.

    Named for the main cluster explicitly: the tick runs on the schedules cluster, and a task
    queued there without a cluster name would land on the schedules cluster's own queue. As
    with events: with the ORM broker the task row is written inside the caller's transaction
    (it commits with the rows it is about, or not at all); in sync mode (tests) the task runs
    now, inside it; with Redis it is sent after commit.
    """
    cluster = settings.Q_CLUSTER

    if cluster.get("sync") or _uses_orm_broker():
        async_task(func, *args, task_name=None, group=group, cluster=cluster.get("name"))
    else:
        task_send_on_commit(func, *args, task_name=None, group=group, cluster=cluster.get("name"))
