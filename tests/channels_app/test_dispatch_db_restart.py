"""The database goes away mid-dispatch (a restart, a failover): the worker lives on, and what
the provider already accepted is never sent again.

A dispatcher marks each accepted message on its row before the provider gets the next one. When
the mark cannot be written (the connection was terminated), it keeps the outcome, reconnects
and writes it again, sending nothing more meanwhile; the rest of the batch goes on after.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import nullcontext
from datetime import timedelta

import psycopg
import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from channels_app.models import Delivery
from channels_app.services import deliveries_dispatch
from channels_app.services.claim import sending_lease
from channels_app.services.dispatch import deliveries_dispatch_due
from tests.channels_app.factories import CustomerFactory
from tests.channels_app.servers import Plan
from tests.channels_app.test_dispatch_batch import record
from tests.channels_app.test_dispatch_lanes import hook_channel

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="terminates a PostgreSQL backend"),
    pytest.mark.django_db(transaction=True),
]


def terminate_other_backends() -> None:
    """What a restart does to every client: their backends end (from a connection of our own),
    and we wait until they are gone."""
    params = {**connection.get_connection_params(), "application_name": "test-terminator"}
    with psycopg.connect(**params, autocommit=True) as admin:
        # never another terminator's own connection (under load, the 70th message's call can
        # come while the 30th's still waits)
        others = ("FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                  " AND backend_type = 'client backend' AND application_name <> 'test-terminator'")
        admin.execute(f"SELECT pg_terminate_backend(pid) {others}")  # noqa: S608 - constant text
        for _ in range(100):
            if not admin.execute(f"SELECT count(*) {others}").fetchone()[0]:  # noqa: S608
                return
            time.sleep(0.02)


def test_a_connection_lost_between_a_send_and_its_mark_sends_nothing_twice(vendor, monkeypatch):
    # given 100 webhook messages over 4 sessions, and a vendor that, on taking the 30th and the
    # 70th message, has the dispatcher's database connection terminated before it answers
    people = [CustomerFactory(external_id=f"c{i}", email=f"c{i}@example.com") for i in range(100)]
    hook = hook_channel(vendor, monkeypatch)
    with monkeypatch.context() as patch:  # recorded, not handed to a worker yet
        patch.setattr("channels_app.services.sending.task_send_on_commit", lambda *a, **k: None)
        deliveries = record(hook, people, django_capture_on_commit_callbacks=lambda execute: nullcontext())
    vendor.default = Plan(200, {"id": "ok"}, delay=0.005)
    vendor.on_request = lambda n: terminate_other_backends() if n in (30, 70) else None

    # when a worker dispatches them (a task that failed would be logged by the queue, as here)
    try:
        deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])
    except OperationalError:
        connection.close()  # as the queue's worker does after a failed task
    vendor.on_request = None
    # and the sweeper later finds whatever a dead claim left (past its lease)
    deliveries_dispatch_due(now=timezone.now() + sending_lease() + timedelta(minutes=1))

    # then each customer got exactly one message, and every delivery is recorded sent
    received = Counter(r.headers["Idempotency-Key"] for r in vendor.requests)
    assert sorted(received) == sorted(d.idempotency_key for d in deliveries)
    assert [key for key, n in received.items() if n > 1] == []
    assert Counter(Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).values_list("status", flat=True)) == {
        "sent": 100}
