"""Dispatchers racing, with real commits and threads (PostgreSQL): one send per delivery, SKIP LOCKED
claims that never wait, frequency caps that hold between workers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from channels_app.models import Delivery
from channels_app.services import deliveries_dispatch, deliveries_drain, delivery_dispatch, message_send
from tests.channels_app.factories import CapFactory, ChannelFactory, CustomerFactory, TemplateFactory, topic
from tests.channels_app.servers import Plan
from tests.marks import on_postgres
from tests.proc import committed_meanwhile, run_in_threads


# Real commits and threads (SQLite's shared in-memory test database locks whole tables).
pytestmark = on_postgres("row locks, several connections at once")


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


def _due_webhooks(vendor, monkeypatch, count: int) -> list[Delivery]:
    """`count` webhook calls due now (deferred, their time has come), none sent yet."""
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s")
    hook = ChannelFactory(name="hook", kind="webhook", provider="webhook", breaker_threshold=50,
                          settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK"})
    customer = CustomerFactory()
    return Delivery.objects.bulk_create(
        Delivery(idempotency_key=f"due-{i}", customer=customer, channel=hook, to=vendor.url, body="{}",
                 transactional=True, status="deferred", reason="quiet_hours",
                 next_attempt_at=timezone.now() - timedelta(seconds=1)) for i in range(count))


def test_a_dispatcher_skips_rows_another_one_holds_and_never_waits_for_them(vendor, monkeypatch):
    due = _due_webhooks(vendor, monkeypatch, 12)
    held_ids = [d.pk for d in due[:5]]
    locked, release = threading.Event(), threading.Event()

    def other_dispatcher():  # holds 5 of them, as a dispatcher mid-claim would
        with transaction.atomic():
            list(Delivery.objects.select_for_update().filter(pk__in=held_ids))
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=lambda: (other_dispatcher(), connection.close()))
    holder.start()
    locked.wait(10)
    started = time.monotonic()
    outcome = deliveries_drain(seconds=20)
    took = time.monotonic() - started
    release.set()
    holder.join(10)

    assert outcome["sent"] == 7 and took < 10  # the 7 free ones, without waiting for the locked 5
    assert set(Delivery.objects.filter(pk__in=held_ids).values_list("status", flat=True)) == {"deferred"}
    deliveries_drain(seconds=20)
    keys = [r.headers["Idempotency-Key"] for r in vendor.requests]
    assert sorted(keys) == sorted(d.idempotency_key for d in due)  # every one once


def test_two_dispatchers_draining_together_send_every_delivery_once(vendor, monkeypatch, settings):
    settings.DELIVERY_BATCH_SIZE = 5
    due = _due_webhooks(vendor, monkeypatch, 40)
    vendor.default = Plan(200, {"id": "ok"}, delay=0.01)
    outcomes: list[dict] = []

    run_in_threads(*[lambda: outcomes.append(deliveries_drain(seconds=30))] * 2)

    keys = [r.headers["Idempotency-Key"] for r in vendor.requests]
    assert sorted(keys) == sorted(d.idempotency_key for d in due)  # none twice, none missed
    assert sum(o.get("sent", 0) for o in outcomes) == 40
    assert set(Delivery.objects.values_list("status", flat=True)) == {"sent"}


def test_a_frequency_cap_holds_when_two_workers_send_to_the_same_customers(settings):
    """Two workers, each with its own message for the same 60 customers, a cap of one message a
    day: each customer gets one, whichever worker is faster (the claim locks the customer)."""
    CapFactory(name="one a day", limit=1, window_s=86400, action="suppress")
    news = TemplateFactory(topic=topic("product_updates"))
    first = ChannelFactory(name="mail-a", kind="email", provider="console")
    second = ChannelFactory(name="mail-b", kind="email", provider="console")
    people = [CustomerFactory(email=f"c{i}@example.com") for i in range(60)]
    batches = [[Delivery.objects.create(idempotency_key=f"{channel.name}-{c.pk}", customer=c, channel=channel,
                                        template=news, topic=news.topic, to=c.email, status="queued").pk
                for c in people] for channel in (first, second)]

    run_in_threads(*[lambda ids=ids: deliveries_dispatch(delivery_ids=ids) for ids in batches])

    sent = Counter(Delivery.objects.filter(status="sent").values_list("customer_id", flat=True))
    assert sent == Counter({c.pk: 1 for c in people})
    assert Delivery.objects.filter(status="suppressed", reason="frequency_cap").count() == 60


def test_a_resume_waits_for_a_claim_that_is_holding_messages_for_the_pause(vendor, monkeypatch):
    """A claim that read the channel as paused holds its messages for the pause (an hour's recheck);
    a resume committing meanwhile must not release before the claim's holds are visible. The
    paused channel row is locked FOR SHARE by the claim: the resume waits, and its release sends
    the message held in the claim that was running."""
    from channels_app.services import channel_pause_set
    from channels_app.services.claim import deliveries_claim
    from tests.factories import UserFactory

    (delivery,) = _due_webhooks(vendor, monkeypatch, 1)
    hook = delivery.channel
    Channel = type(hook)
    Channel.objects.filter(pk=hook.pk).update(paused=True)
    hook.refresh_from_db()
    ops = UserFactory(is_superuser=True)
    claimed_in_a, errors = threading.Event(), []

    def claim_and_linger():
        try:
            with transaction.atomic():
                deliveries_claim(ids=[delivery.pk], now=timezone.now())
                claimed_in_a.set()
                time.sleep(0.5)  # the claim's transaction is still open when the resume comes
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            claimed_in_a.set()
            connection.close()

    a = threading.Thread(target=claim_and_linger)
    a.start()
    claimed_in_a.wait(10)
    channel_pause_set(channel=hook, paused=False, actor=ops, reason="vendor back")  # autocommit: releases on commit
    a.join()

    assert errors == []
    delivery.refresh_from_db()
    assert delivery.status == "sent" and len(vendor.requests) == 1


def test_a_receipt_that_waits_on_a_merge_is_recorded_for_the_surviving_customer(django_capture_on_commit_callbacks):
    """The vendor reports an SMS delivered while the customer's profile is being merged into
    another (the delivery moves to the survivor): the receipt waits for the merge and is recorded,
    as the survivor's, not dropped as a message nobody knows."""
    from channels_app.services.tracking import delivery_status_record
    from journeys.models import Customer

    sms = ChannelFactory(name="sms", kind="sms")
    device, known = CustomerFactory(), CustomerFactory()
    delivery = Delivery.objects.create(idempotency_key="merging", customer=device, channel=sms, status="sent",
                                       attempts=1, claimed_at=timezone.now(), sent_at=timezone.now())
    with committed_meanwhile(lambda: Delivery.objects.filter(customer=device).update(customer=known)):
        recorded = delivery_status_record(delivery_id=delivery.pk, status="delivered")

    assert recorded is not None and recorded.customer_id == known.pk
    delivery.refresh_from_db()
    assert (delivery.status, delivery.customer_id) == ("delivered", known.pk)
    assert Customer.objects.get(pk=known.pk).events.filter(name="Message Delivered").exists()


def test_two_drains_send_the_receipts_first_within_the_rate_limit(settings):
    """Given an SMS channel limited to 100 a minute, 300 marketing messages due and then 5 receipts due at
    the same moment (as a rate limit defers them), when two drains claim batches of 50 side by side, the
    receipts are among the 100 sent (the claims take transactional messages first), and the limit holds."""
    settings.DELIVERY_BATCH_SIZE = 50
    sms = ChannelFactory(name="sms", kind="sms", provider="console", rate_limit_per_minute=100)
    promo, receipt = TemplateFactory(topic=topic("product_updates")), TemplateFactory(topic=topic("transactional"))
    people = [CustomerFactory(phone=f"+1555100{i:04d}") for i in range(30)]
    due = timezone.now() - timedelta(seconds=1)

    def rows(template, n, prefix):
        return Delivery.objects.bulk_create([
            Delivery(idempotency_key=f"{prefix}-{i}", customer=people[i % 30], channel=sms, template=template,
                     topic=template.topic, transactional=template.topic.transactional, to=people[i % 30].phone,
                     status="deferred", reason="rate_limit", next_attempt_at=due) for i in range(n)])

    backlog, receipts = rows(promo, 300, "promo"), rows(receipt, 5, "receipt")

    run_in_threads(*[lambda: deliveries_drain(seconds=20)] * 2)

    assert set(Delivery.objects.filter(pk__in=[d.pk for d in receipts]).values_list("status", flat=True)) == {"sent"}
    assert Delivery.objects.filter(pk__in=[d.pk for d in backlog], status="sent").count() == 95
