"""Transactional messages go first: a receipt or one-time code does not wait behind a marketing
backlog on a rate-limited channel (QA caps #1); the claim reads them through their own index."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from channels_app.models import Delivery
from channels_app.services import deliveries_dispatch, deliveries_drain, message_send
from channels_app.services.claim import deliveries_claim
from tests.channels_app.factories import CapFactory, ChannelFactory, CustomerFactory, TemplateFactory, topic

pytestmark = pytest.mark.django_db

BACKLOG, RECEIPTS, PER_MINUTE = 300, 5, 100


def _record(channel, customers, template, prefix, n, now, capture):
    with capture(execute=False):  # recorded; the test dispatches them itself, at the moments it chooses
        return [message_send(customer=customers[i % len(customers)], template=template, channel=channel,
                             idempotency_key=f"{prefix}-{i}", context={}, now=now).pk for i in range(n)]


def test_receipts_go_out_in_the_next_claim_ahead_of_a_marketing_backlog(django_capture_on_commit_callbacks):
    """Given an SMS channel limited to 100 a minute and 300 marketing messages (100 sent, 200 held by the
    limit), when 5 receipts come in a second later, they are held by the limit too; then at the next claim,
    the receipts go out first, within the same budget: 5 receipts and 95 marketing messages, not 100 of
    the backlog with the receipts left for later."""
    sms = ChannelFactory(name="sms", kind="sms", provider="console", rate_limit_per_minute=PER_MINUTE)
    customers = [CustomerFactory(external_id=f"c{i}", phone=f"+1555000{i:04d}") for i in range(20)]
    promo, receipt = TemplateFactory(topic=topic("product_updates")), TemplateFactory(topic=topic("transactional"))
    start = timezone.now()

    backlog = _record(sms, customers, promo, "promo", BACKLOG, start, django_capture_on_commit_callbacks)
    deliveries_dispatch(delivery_ids=backlog, now=start)
    receipts = _record(sms, customers, receipt, "receipt", RECEIPTS, start + timedelta(seconds=1),
                       django_capture_on_commit_callbacks)
    deliveries_dispatch(delivery_ids=receipts, now=start + timedelta(seconds=1))

    waiting = Delivery.objects.filter(pk__in=receipts)
    assert {(d.status, d.reason) for d in waiting} == {("deferred", "rate_limit")}
    assert Delivery.objects.filter(pk__in=backlog, status="sent").count() == PER_MINUTE

    deliveries_drain(now=start + timedelta(minutes=2))  # the next minute's budget

    assert sorted(waiting.values_list("status", flat=True)) == ["sent"] * RECEIPTS
    assert Delivery.objects.filter(pk__in=backlog, status="sent").count() == 2 * PER_MINUTE - RECEIPTS
    assert Delivery.objects.filter(pk__in=backlog, status="deferred", reason="rate_limit").count() == \
        BACKLOG - 2 * PER_MINUTE + RECEIPTS


def test_a_batch_given_by_id_sends_its_transactional_messages_within_the_budget_first(
        django_capture_on_commit_callbacks):
    """Given a channel with 2 sends a minute left, when one dispatch gets 3 marketing messages and a
    receipt (the receipt last), the receipt is one of the 2 sent."""
    sms = ChannelFactory(name="sms", kind="sms", provider="console", rate_limit_per_minute=2)
    ada = CustomerFactory(external_id="ada", phone="+15550001")
    now = timezone.now()
    promo = _record(sms, [ada], TemplateFactory(topic=topic("product_updates")), "p", 3, now,
                    django_capture_on_commit_callbacks)
    [receipt] = _record(sms, [ada], TemplateFactory(topic=topic("transactional")), "r", 1, now,
                        django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[*promo, receipt], now=now)

    assert Delivery.objects.get(pk=receipt).status == "sent"
    assert sorted(Delivery.objects.filter(pk__in=promo).values_list("status", flat=True)) == \
        ["deferred", "deferred", "sent"]


def _a_realistic_table(channel, now, per_customer: int = 60, customers: int = 50) -> None:
    """Other customers' history and a marketing backlog due (3,000 of each), then ANALYZE: the planner
    picks its plan from real statistics, as in production, not from a near-empty table."""
    people = CustomerFactory.create_batch(customers)
    common = dict(channel=channel, topic=topic("product_updates"), transactional=False)
    Delivery.objects.bulk_create(
        [Delivery(idempotency_key=f"history-{c.pk}-{i}", customer=c, status="sent", to=f"{c.pk}@example.com",
                  sent_at=now - timedelta(minutes=i), **common) for c in people for i in range(per_customer)]
        + [Delivery(idempotency_key=f"due-{c.pk}-{i}", customer=c, status="deferred", to=f"{c.pk}@example.com",
                    next_attempt_at=now - timedelta(seconds=i), **common) for c in people for i in range(per_customer)])
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Delivery._meta.db_table}")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="query plans are PostgreSQL's")
def test_the_claim_reads_waiting_receipts_and_recent_contacts_through_indexes(django_capture_on_commit_callbacks):
    """The claim's query for the transactional messages due uses their partial index (not the due index
    over the whole backlog), and the caps' count of recent contacts the (customer, sent_at) index: the
    planner's own choice, on a table of a few thousand rows and its statistics (sequential scans allowed)."""
    CapFactory(name="one a day", limit=1, window_s=86400)
    email = ChannelFactory(name="email", kind="email", provider="console")
    ada = CustomerFactory(external_id="ada", email="ada@example.com")
    now = timezone.now()
    [pk] = _record(email, [ada], TemplateFactory(topic=topic("product_updates")), "p", 1, now,
                   django_capture_on_commit_callbacks)
    Delivery.objects.filter(pk=pk).update(status="deferred", next_attempt_at=now)

    with CaptureQueriesContext(connection) as queries:
        deliveries_claim(now=now + timedelta(seconds=1))
    _a_realistic_table(email, now)

    def plan(*markers: str) -> str:
        found = [q["sql"] for q in queries.captured_queries if all(m in q["sql"] for m in markers)]
        assert found, f"no claim query with {markers}: {[q['sql'] for q in queries.captured_queries]}"
        sql = found[0]
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN {sql}")
            return " ".join(row[0] for row in cursor.fetchall())

    receipts = plan("FOR UPDATE", '"transactional")')
    assert "delivery_due_tx_idx" in receipts, receipts
    contacts = plan("UNION ALL", "sent_at")
    assert "delivery_customer_sent_idx" in contacts, contacts
