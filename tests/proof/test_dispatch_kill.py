"""A worker SIGKILLed mid-batch while it sends email: every customer still gets exactly one message.

A live workflow emails each customer (`send_message`, smtp provider) through a real aiosmtpd
server in the test process. Events come in through the HTTP API with the ORM broker, as in
production; a real `manage.py qcluster` (one worker) processes them: the engine records the
batch's deliveries and queues one `deliveries_send` task, and the worker sends them over one
SMTP session. The server holds the K-th message at its RCPT command (no answer), the test
finds the worker process that owns that connection (/proc) and SIGKILLs it: messages 1..K-1
were accepted, K was in flight (never accepted), the rest were not sent yet.

Recovery is the product's: the ORM broker hands the task out again after Q_RETRY, to the
respawned worker, whose claim finds the rows still `sending` (lease not expired) and sends
nothing; after the lease (DELIVERY_SENDING_LEASE_S, short here) the sweeper records the
accepted messages as sent and drains the others. What the server received is counted as it
arrived: a Message-ID seen twice is counted twice.

PostgreSQL only: real worker processes on the test database.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from datetime import timedelta
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller
from django.db import connection
from django.utils import timezone

from channels_app.models import Channel, Delivery, MessageTemplate
from channels_app.services import deliveries_dispatch_due
from journeys.models import BusinessUnit, Event
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.factories import CustomerFactory
from tests.marks import on_postgres
from tests.proc import QCluster, database_url, free_port, pid_owning_port, wait_until

pytestmark = on_postgres("real worker processes on the test database")

K, LEASE_S = 11, 8


class HoldingSink:
    """aiosmtpd handler: records every message it accepts (recipient, Message-ID), and holds the
    RCPT of the K-th message and of every one after it (no answer) until released; `held` is set
    once `sessions` sessions wait there (every session of the dispatcher: none is between an
    accepted message and its mark), `held_peer` is a client's address."""

    def __init__(self, hold_at: int, sessions: int = 1):
        self.received: list[tuple[str, str]] = []
        self.rcpts = self.holding = 0
        self.hold_at, self.sessions = hold_at, sessions
        self.held = threading.Event()
        self.release = threading.Event()
        self.held_peer: tuple | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpts += 1
        if self.rcpts >= self.hold_at and not self.release.is_set():
            self.held_peer = session.peer
            self.holding += 1
            if self.holding == self.sessions:
                self.held.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        mail = message_from_bytes(envelope.content, policy=policy.default)
        self.received.append((mail["To"], mail["Message-ID"]))
        return "250 Message accepted for delivery"


@pytest.mark.parametrize(("count", "sessions"), [(30, 1), (100, 4)], ids=["one_session", "four_sessions"])
def test_a_worker_killed_mid_batch_sends_each_message_exactly_once(api, orm_broker, settings, count, sessions):
    """With four sessions (a large batch over `connections`), the worker is killed while every
    session waits at its next message's RCPT, each having marked the one before."""
    settings.DELIVERY_SENDING_LEASE_S = LEASE_S
    sink = HoldingSink(hold_at=K, sessions=sessions)
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    smtp.start()
    Channel.objects.create(name="proof-mail", kind="email", provider="smtp", settings={
        "host": smtp.hostname, "port": smtp.port, "from_email": "news@shop.test", "timeout": 60,
        "connections": sessions})
    MessageTemplate.objects.create(name="proof-receipt", subject="Thanks", body="Order {{ event.properties.n }}")
    unit = BusinessUnit.objects.create(name="Proof", slug="proof")
    version_publish(version=version_build(workflow=workflow_create(name="kill-proof", business_unit=unit), definition={
        "trigger_event": "Order Completed",
        "steps": [{"key": "send", "kind": "send_message", "config": {"channel": "proof-mail",
                                                                     "template": "proof-receipt"}}],
    }), reason="test")
    people = [CustomerFactory(external_id=f"k{i}", email=f"k{i}@example.com") for i in range(count)]
    response = api.post("batch", {"batch": [{"type": "track", "userId": p.external_id, "event": "Order Completed",
                                             "messageId": f"order-{i}", "properties": {"n": i}}
                                            for i, p in enumerate(people)]})
    assert response.status_code == 200

    cluster = QCluster(db_url=database_url(connection.settings_dict), app_name="proof-dispatch-kill", workers=1,
                       retry=4, timeout=60, extra_env={"DELIVERY_SENDING_LEASE_S": str(LEASE_S), "DEBUG": "0"})
    try:
        with cluster:
            wait_until(sink.held.is_set, timeout=90, interval=0.05,
                       message=f"the worker to reach message {K}\n{cluster.output()}")
            worker = pid_owning_port(sink.held_peer[1], cluster.pids())
            assert worker not in (None, cluster.pgid), "could not find the sending worker"
            cluster.signal(signal.SIGKILL, worker)  # mid-batch: K-1 accepted, one in flight a session, the rest waiting
            killed_at = timezone.now()
            sink.release.set()
            assert len(sink.received) == K - 1
            marked = Delivery.objects.filter(status="sending", accepted_at__isnull=False).count()
            assert marked == K - 1, "each accepted message is marked before the next one goes"

            # The task is handed out again (Q_RETRY) to the respawned worker, before the lease ends.
            wait_until(lambda: Event.objects.filter(name="Message Sent").count() == 0
                       and _task_done("channels_app.tasks.deliveries_send"), timeout=40, interval=0.2,
                       message=f"the killed task to run again\n{cluster.output()}")
            assert len(sink.received) == K - 1, "a message went out again before its lease expired"
            assert timezone.now() - killed_at < timedelta(seconds=LEASE_S)

            # After the lease, the sweeper: accepted ones are recorded as sent, the others are drained.
            time.sleep(max(0.0, LEASE_S + 0.5 - (timezone.now() - killed_at).total_seconds()))
            assert deliveries_dispatch_due() > 0
            wait_until(lambda: Delivery.objects.filter(status="sent").count() == count, timeout=60, interval=0.2,
                       message=f"every delivery sent after the lease\n{cluster.output()}")
    finally:
        sink.release.set()
        smtp.stop()

    per_customer = Counter(to for to, _ in sink.received)
    assert per_customer == Counter({p.email: 1 for p in people}), "a customer got two messages, or none"
    assert len({mid for _, mid in sink.received}) == count
    assert Event.objects.filter(name="Message Sent").count() == count
    retried = Delivery.objects.filter(attempts=2)
    assert retried.count() == count - (K - 1)  # the one in flight and those not reached: sent after the lease


def _task_done(func: str) -> bool:
    from django_q.models import Task

    return Task.objects.filter(func=func).exists()
