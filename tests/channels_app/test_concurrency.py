"""Two workers racing for the same delivery, with real commits and threads: one send only."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from channels_app.models import Delivery
from channels_app.services import delivery_dispatch, message_send
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory
from tests.channels_app.servers import Plan


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql",
                    reason="SQLite's shared in-memory test database locks whole tables; set DATABASE_URL to run")
@pytest.mark.django_db(transaction=True)
def test_two_workers_dispatching_the_same_delivery_send_it_once(vendor, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_SLACK_TOKEN", "x")
    chat = ChannelFactory(name="chat", kind="chat", provider="slack",
                          settings={"base_url": vendor.url, "bot_token_env": "JOURNEYS_SECRET_TEST_SLACK_TOKEN"})
    customer = CustomerFactory(traits={"chat_id": "U1"})
    delivery = message_send(customer=customer, template=TemplateFactory(), channel=chat, idempotency_key="race",
                            context={})  # autocommit: the on-commit send ran already; make it queued again
    Delivery.objects.filter(pk=delivery.pk).update(status="queued", attempts=0, sent_at=None)
    vendor.requests.clear()
    vendor.plan(Plan(200, {"ok": True, "ts": "9"}, delay=0.5), Plan(200, {"ok": True, "ts": "10"}, delay=0.5))
    barrier, errors = threading.Barrier(2), []

    def worker():
        try:
            barrier.wait()
            delivery_dispatch(delivery_id=delivery.pk)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(vendor.requests) == 1
    assert Delivery.objects.get(pk=delivery.pk).status == "sent"
