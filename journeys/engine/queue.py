"""Hand work to django-q2 so that nothing is lost between the web and the workers."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django_q.tasks import async_task

BATCH = 200


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
    chunks = [event_ids[i : i + BATCH] for i in range(0, len(event_ids), BATCH)]

    def send() -> None:
        for chunk in chunks:
            async_task("journeys.tasks.events_process", chunk, task_name=None, group="events")

    if _uses_orm_broker():
        send()
    else:
        transaction.on_commit(send)
