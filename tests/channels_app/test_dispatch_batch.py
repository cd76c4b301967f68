"""Batched dispatch against real servers: a batch of emails over one SMTP session (a refused
recipient and a dropped connection fail only their own message), webhook calls over one
keep-alive connection (a 429 with Retry-After or a 5xx mid-batch), a breaker that opens
mid-batch sending the rest to the fallback, a worker that dies mid-batch never sending an
accepted message again, and deferred messages released in batches."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from email.utils import parsedate_to_datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.conf import settings
from django.utils import timezone
from django_q.models import Task

from channels_app.models import ChannelBreaker, Delivery, DeliveryAttempt
from channels_app.providers import provider
from channels_app.providers.http import WebhookProvider
from channels_app.services import deliveries_dispatch, deliveries_dispatch_due, message_send
from journeys.models import Event
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory, topic
from tests.channels_app.servers import FakeVendor, Plan

pytestmark = pytest.mark.django_db


def record(channel, people, *, template=None, now=None, django_capture_on_commit_callbacks) -> list[Delivery]:
    """Deliveries recorded (queued, or held) without sending them: their send task is dropped."""
    template = template or TemplateFactory(topic=topic("product_updates"), body="Hi {{ profile.first_name }}")
    with django_capture_on_commit_callbacks(execute=False):
        return [message_send(customer=c, template=template, channel=channel, idempotency_key=f"k-{c.external_id}",
                             context={}, now=now) for c in people]


def status(deliveries) -> list[tuple[str, str]]:
    return [(d.status, d.reason) for d in Delivery.objects.filter(pk__in=[x.pk for x in deliveries]).order_by("id")]


@pytest.fixture
def people():
    return [CustomerFactory(external_id=f"p{i}", email=f"p{i}@example.com", phone=f"+1555000{i:04d}",
                            traits={"first_name": f"P{i}"}) for i in range(5)]


@pytest.fixture
def email(smtp):
    return ChannelFactory(name="email", kind="email", provider="smtp", settings={"from_email": "news@shop.test"})


@pytest.fixture
def hook(vendor, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    return ChannelFactory(name="hook", kind="webhook", provider="webhook", retry_base_s=10, breaker_threshold=5,
                          settings={"url": vendor.url + "/hook", "secret_env": "JOURNEYS_SECRET_TEST_HOOK", "timeout": 2})


def test_a_batch_of_emails_goes_over_one_smtp_session_and_a_refused_recipient_fails_alone(
        email, people, smtp, django_capture_on_commit_callbacks):
    smtp.refuse = {"p2@example.com": "550 5.1.1 no such user"}
    deliveries = record(email, people, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    assert sorted(m["To"] for m in smtp.messages) == ["p0@example.com", "p1@example.com", "p3@example.com",
                                                       "p4@example.com"]
    assert len({peer for peer in smtp.peers}) == 1  # one connection for the whole batch
    assert status(deliveries) == [("sent", "")] * 2 + [("bounced", "undeliverable")] + [("sent", "")] * 2
    assert Event.objects.filter(name="Message Sent").count() == 4
    assert Event.objects.filter(name="Message Bounced").count() == 1
    # each message has its own stable Message-ID, and the time it was sent
    assert len({m["Message-ID"] for m in smtp.messages}) == 4
    dates = [parsedate_to_datetime(m["Date"]) for m in smtp.messages]  # "-0000": UTC, naive
    assert all(abs((d if d.tzinfo else d.replace(tzinfo=UTC)) - timezone.now()) < timedelta(seconds=30) for d in dates)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="server-side prepared statements are PostgreSQL's")
def test_the_mark_of_each_accepted_message_is_planned_once_per_connection(
        email, people, smtp, django_capture_on_commit_callbacks):
    """The one statement a message of the send loop costs is a prepared statement: parsed and
    planned once per connection, not for every message; nothing else is prepared by it."""
    def marks() -> list[tuple]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements "
                           "WHERE statement LIKE %s", ["UPDATE channels_app_delivery SET accepted_at%"])
            return cursor.fetchall()

    first = record(email, people[:2], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    deliveries_dispatch(delivery_ids=[d.pk for d in first])
    assert [uses for _, uses in marks()] == [2]
    later = record(email, people[2:], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    deliveries_dispatch(delivery_ids=[d.pk for d in later])

    assert [uses for _, uses in marks()] == [5]  # the same statement, executed for every message
    assert status(first + later) == [("sent", "")] * 5 and len(smtp.messages) == 5
    assert connection.connection.prepare_threshold is None  # Django's queries stay unprepared
    Delivery.objects.filter(pk=first[0].pk).exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cursor.fetchone() == (1,)


def test_a_dropped_smtp_connection_fails_only_the_message_in_flight_and_the_next_reconnects(
        email, people, smtp, django_capture_on_commit_callbacks):
    smtp.drop = {"p1@example.com"}
    deliveries = record(email, people, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    assert status(deliveries) == [("sent", "")] + [("deferred", "retry")] + [("sent", "")] * 3
    assert len({peer for peer in smtp.peers}) == 2  # reconnected once
    retried = Delivery.objects.get(pk=deliveries[1].pk)
    assert "SMTP connection" in retried.error and retried.attempts == 1

    deliveries_dispatch_due(now=retried.next_attempt_at)  # the retry, with the same Message-ID

    assert Delivery.objects.get(pk=retried.pk).status == "sent"
    assert sorted(m["To"] for m in smtp.messages) == sorted(p.email for p in people)


def test_webhook_calls_share_one_keep_alive_connection_through_a_429_and_a_500(
        hook, people, vendor, django_capture_on_commit_callbacks):
    vendor.plan(Plan(200, {"id": "a"}), Plan(429, {"error": "slow down"}, headers={"Retry-After": "120"}),
                Plan(200, {"id": "c"}), Plan(503, {"error": "busy"}), Plan(200, {"id": "e"}))
    deliveries = record(hook, people, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    before = timezone.now()

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    assert len(vendor.requests) == 5 and len(set(vendor.ports)) == 1
    assert status(deliveries) == [("sent", ""), ("deferred", "retry"), ("sent", ""), ("deferred", "retry"),
                                  ("sent", "")]
    throttled, busy = (Delivery.objects.get(pk=deliveries[i].pk) for i in (1, 3))
    assert (throttled.next_attempt_at - before).total_seconds() >= 120  # Retry-After honoured
    assert 5 <= (busy.next_attempt_at - before).total_seconds() <= 12  # base 10 s, jittered
    assert [r.headers["Idempotency-Key"] for r in vendor.requests] == [d.idempotency_key for d in deliveries]
    assert ChannelBreaker.objects.get(channel=hook).consecutive_failures == 0  # the last call succeeded


def test_the_webhook_bulk_endpoint_sends_a_batch_in_one_request_with_an_outcome_each(
        hook, people, vendor, django_capture_on_commit_callbacks):
    hook.settings = {**hook.settings, "batch_url": vendor.url + "/bulk", "batch_size": 10}
    hook.save()
    deliveries = record(hook, people, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    keys = [d.idempotency_key for d in deliveries]
    vendor.plan(Plan(200, {"results": [{"idempotency_key": keys[0], "status": 200, "id": "x0"},
                                       {"idempotency_key": keys[1], "status": 422, "error": "bad address"},
                                       {"idempotency_key": keys[2], "status": 503, "error": "later"},
                                       {"idempotency_key": keys[3], "status": 202, "id": "x3"}]}))

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    [request] = vendor.requests
    assert request.path == "/bulk" and [m["idempotency_key"] for m in request.json()["messages"]] == keys
    assert status(deliveries) == [("sent", ""), ("failed", "permanent_error"), ("deferred", "retry"),
                                  ("sent", ""), ("deferred", "retry")]  # the last had no result: retried
    assert Delivery.objects.get(pk=deliveries[3].pk).provider_message_id == "x3"


def test_a_breaker_that_opens_inside_a_bulk_request_still_records_what_the_vendor_accepted(
        hook, people, vendor, django_capture_on_commit_callbacks):
    # given a bulk endpoint whose answer fails the first two messages (the breaker opens) and accepts the rest
    hook.settings = {**hook.settings, "batch_url": vendor.url + "/bulk", "batch_size": 10}
    hook.breaker_threshold = 2
    hook.save()
    deliveries = record(hook, people, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    keys = [d.idempotency_key for d in deliveries]
    vendor.plan(Plan(200, {"results": [{"idempotency_key": k, "status": 503 if i < 2 else 200, "id": f"x{i}"}
                                       for i, k in enumerate(keys)]}))

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    # then the accepted three are sent, not claimed again as "not sent" (the request already carried them)
    assert len(vendor.requests) == 1
    assert status(deliveries) == [("deferred", "retry")] * 2 + [("sent", "")] * 3


def test_a_breaker_that_opens_mid_batch_sends_the_rest_to_the_fallback(
        vendor, people, smtp, monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "tw")
    email = ChannelFactory(name="email", kind="email", provider="smtp")
    sms = ChannelFactory(name="sms", kind="sms", provider="twilio_sms", breaker_threshold=2, fallback=email,
                         settings={"base_url": vendor.url, "account_sid": "AC1", "auth_token_env": "JOURNEYS_SECRET_TEST_TWILIO_TOKEN"})
    vendor.fail(2, status=503)
    deliveries = record(sms, people, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    assert len(vendor.requests) == 2  # nothing more went to the failing provider
    assert ChannelBreaker.objects.get(channel=sms).state == "open"
    rows = list(Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).order_by("id"))
    assert [(d.status, d.channel.name) for d in rows] == [("deferred", "sms")] * 2 + [("sent", "email")] * 3
    assert all(d.requested_channel.name == "sms" and d.notes["rerouted"][0]["why"] == "breaker open"
               and d.attempts == 1 for d in rows[2:])
    assert sorted(m["To"] for m in smtp.messages) == ["p2@example.com", "p3@example.com", "p4@example.com"]
    assert DeliveryAttempt.objects.filter(channel=sms).count() == 2


@provider
class DyingWebhook(WebhookProvider):
    """The webhook provider on a worker that is killed (SystemExit: no except clause of ours
    runs) while it sends the message to `settings.die_at`."""

    name = "dying_webhook_for_tests"

    def send(self, message):
        if message.to == self.settings.get("die_at"):
            raise SystemExit("killed")
        return super().send(message)


def test_a_worker_dying_mid_batch_never_sends_an_accepted_message_again(
        vendor, people, monkeypatch, settings, django_capture_on_commit_callbacks):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    channel = ChannelFactory(name="hook", kind="in_app", provider="dying_webhook_for_tests",
                             settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK", "die_at": "p3"})
    deliveries = record(channel, people, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    ids = [d.pk for d in deliveries]

    with pytest.raises(SystemExit):
        deliveries_dispatch(delivery_ids=ids)
    assert len(vendor.requests) == 3  # p0, p1, p2 went out; the worker died sending p3
    assert set(Delivery.objects.values_list("status", flat=True)) == {"sending"}

    channel.settings = {k: v for k, v in channel.settings.items() if k != "die_at"}  # a healthy worker now
    channel.save()
    deliveries_dispatch(delivery_ids=ids)  # the task runs again before the lease ends: nothing is sent
    deliveries_dispatch_due(now=timezone.now() + timedelta(minutes=5))
    assert len(vendor.requests) == 3

    deliveries_dispatch_due(now=timezone.now() + timedelta(seconds=settings.DELIVERY_SENDING_LEASE_S + 1))

    assert status(deliveries) == [("sent", "")] * 5
    received = [r.json()["to"] for r in vendor.requests]
    assert sorted(received) == ["p0", "p1", "p2", "p3", "p4"]  # each exactly once
    assert Event.objects.filter(name="Message Sent").count() == 5
    # the one in flight when the worker died may have arrived: those not marked are never rerouted
    unanswered = {d.customer.external_id for d in Delivery.objects.filter(pk__in=ids) if d.notes.get("unanswered")}
    assert unanswered == {"p3", "p4"}


def test_messages_held_by_quiet_hours_are_released_in_batches_by_one_task(
        settings, django_capture_on_commit_callbacks):
    settings.DELIVERY_BATCH_SIZE = 20
    sms = ChannelFactory(name="sms", kind="sms", provider="console", quiet_start=time(21, 0), quiet_end=time(8, 0))
    night = datetime(2026, 3, 10, 13, 0, tzinfo=UTC)  # 22:00 in Tokyo
    tokyo = [CustomerFactory(external_id=f"t{i}", phone=f"+8190000{i:04d}", timezone="Asia/Tokyo") for i in range(70)]
    held = record(sms, tokyo, now=night, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    deliveries_dispatch(delivery_ids=[d.pk for d in held], now=night)
    assert set(status(held)) == {("deferred", "quiet_hours")}
    morning = datetime(2026, 3, 10, 23, 0, tzinfo=UTC)  # 08:00 in Tokyo

    with CaptureQueriesContext(connection) as queries:
        assert deliveries_dispatch_due(now=morning) == 40  # counted up to what two drains take first

    assert set(status(held)) == {("sent", "")}
    assert Task.objects.filter(func="channels_app.tasks.deliveries_drain").count() == 2  # not one task per message
    drained = Task.objects.filter(func="channels_app.tasks.deliveries_drain").order_by("started")
    assert drained[0].result["batches"] == 4 and drained[0].result["sent"] == 70
    # One statement per message (the mark that makes a crash safe) and ~20 per batch of 20 (one
    # dispatch at a time took ~21 per message).
    assert len(queries) < 3 * 70, [q["sql"][:60] for q in queries.captured_queries]


def test_rerouting_a_batch_around_an_open_breaker_reads_the_customers_once_not_once_a_message(
        people, django_capture_on_commit_callbacks):
    """Given a channel whose breaker is open and a fallback, when batches of one and of three
    messages are dispatched, then both read the customers the same number of times (the traits,
    which the fallback's address rules read, come in one query for the batch)."""
    email = ChannelFactory(name="email", kind="email", provider="console")
    sms = ChannelFactory(name="sms", kind="sms", provider="console", fallback=email)
    ChannelBreaker.objects.create(channel=sms, state="open", opened_at=timezone.now(), consecutive_failures=9)
    deliveries = record(sms, people, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    deliveries_dispatch(delivery_ids=[deliveries[0].pk])  # warm-up: caches of the first dispatch

    with CaptureQueriesContext(connection) as one:
        deliveries_dispatch(delivery_ids=[deliveries[1].pk])
    with CaptureQueriesContext(connection) as three:
        deliveries_dispatch(delivery_ids=[d.pk for d in deliveries[2:]])

    assert status(deliveries) == [("sent", "")] * 5
    assert {d.channel.name for d in Delivery.objects.filter(pk__in=[d.pk for d in deliveries])} == {"email"}
    def customer_reads(ctx) -> int:
        return sum(1 for q in ctx.captured_queries if q["sql"].startswith("SELECT") and 'FROM "journeys_customer"' in q["sql"])
    assert customer_reads(three) == customer_reads(one) >= 1  # one read of the batch's traits, not one a message


@provider
class CallbackFirstProvider(WebhookProvider):
    """A vendor whose 'delivered' callback reaches us before its answer to the send does."""

    name = "callback_first_for_tests"

    def send(self, message):
        from channels_app.services.tracking import delivery_status_record

        delivery_status_record(delivery_id=message.delivery_id, status="delivered")
        return super().send(message)


def test_a_delivered_callback_that_beats_the_send_answer_keeps_delivered_and_gets_its_sent_time(
        vendor, people, monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    channel = ChannelFactory(name="hook", kind="in_app", provider="callback_first_for_tests",
                             settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK"})
    deliveries = record(channel, people[:2], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    rows = list(Delivery.objects.filter(pk__in=[d.pk for d in deliveries]))
    assert [d.status for d in rows] == ["delivered", "delivered"]  # statuses only move forward
    assert all(d.sent_at is not None and d.sent_at == d.accepted_at and d.delivered_at for d in rows)
    assert len(vendor.requests) == 2


@provider
class CallbackThenTimeout(WebhookProvider):
    """A vendor that takes the message and reports it delivered, while its answer to the send
    itself times out on our side."""

    name = "callback_then_timeout_for_tests"

    def send(self, message):
        from channels_app.providers import TransientError
        from channels_app.services.tracking import delivery_status_record

        super().send(message)
        delivery_status_record(delivery_id=message.delivery_id, status="delivered")
        raise TransientError("read timed out")


def test_a_delivered_callback_before_an_error_answer_keeps_delivered_and_nothing_is_sent_again(
        vendor, people, monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    channel = ChannelFactory(name="hook", kind="in_app", provider="callback_then_timeout_for_tests",
                             settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK"})
    [delivery] = record(channel, people[:1], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[delivery.pk])
    deliveries_dispatch_due(now=timezone.now() + timedelta(hours=1))

    row = Delivery.objects.get(pk=delivery.pk)
    assert row.status == "delivered" and len(vendor.requests) == 1  # statuses only move forward
    assert DeliveryAttempt.objects.filter(delivery=row, ok=False).count() == 1  # the answer is on record
    # it was a contact, from its claim (the caps count it from then), whatever its answer said
    assert row.accepted_at is None and row.sent_at == row.claimed_at is not None
    assert not Event.objects.filter(name="Message Failed").exists()


def test_an_error_answer_holding_a_nul_is_recorded_and_retried(vendor, hook, people, django_capture_on_commit_callbacks):
    """PostgreSQL refuses NUL in text and JSON: one such answer failed the whole batch's record,
    leaving every row `sending` until the lease."""
    vendor.plan(Plan(502, raw=b"upstream \x00 error"))
    deliveries = record(hook, people[:2], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    assert status(deliveries) == [("deferred", "retry"), ("sent", "")]
    failed = Delivery.objects.get(pk=deliveries[0].pk)
    assert "upstream \ufffd error" in failed.error
    assert DeliveryAttempt.objects.filter(delivery=failed, status_code=502).count() == 1


def test_a_sending_lease_no_longer_than_the_task_timeout_is_reported_by_the_checks(settings):
    """A dispatcher still sending when its claim's lease ends would send again what the sweeper
    hands to another one: `manage.py check` says so."""
    from django.core.checks import run_checks

    assert not [m for m in run_checks() if m.id == "journeys.W001"]  # the defaults: 600 s against 120 s
    settings.DELIVERY_SENDING_LEASE_S = 120
    [warning] = [m for m in run_checks() if m.id == "journeys.W001"]
    assert "DELIVERY_SENDING_LEASE_S (120) must be longer than the task timeout Q_TIMEOUT (120)" in warning.msg


def test_retry_after_and_the_breaker_count_from_the_answer_not_from_the_claim(
        vendor, people, monkeypatch, django_capture_on_commit_callbacks):
    """A slow first answer makes a long pass: the 429 that comes 1.5 s after the claim asks for
    2 s from then, and the breaker that opens with the 503 after it cools down from then (they
    were counted from the claim: the 429's row was due again at once)."""
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    hook = ChannelFactory(name="hook", kind="in_app", provider="webhook", breaker_threshold=2, breaker_cooldown_s=3,
                          retry_base_s=1, settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK"})
    vendor.plan(Plan(200, {"id": "a"}, delay=1.5), Plan(429, {"error": "slow"}, headers={"Retry-After": "2"}),
                Plan(503, {"error": "busy"}))
    deliveries = record(hook, people[:3], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    claimed = timezone.now()

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    throttled = Delivery.objects.get(pk=deliveries[1].pk)
    assert (throttled.status, throttled.reason) == ("deferred", "retry")
    assert throttled.next_attempt_at >= claimed + timedelta(seconds=1.5 + 2)
    breaker = ChannelBreaker.objects.get(channel=hook)
    assert breaker.state == "open" and breaker.opened_at >= claimed + timedelta(seconds=1.5)
    sent = Delivery.objects.get(pk=deliveries[0].pk)
    assert sent.sent_at >= claimed + timedelta(seconds=1.5)  # when the vendor took it
    assert DeliveryAttempt.objects.get(delivery=throttled).at >= claimed + timedelta(seconds=1.5)


def test_a_send_that_got_no_answer_is_not_rerouted_to_the_fallback_as_well(
        vendor, people, monkeypatch, django_capture_on_commit_callbacks):
    """The vendor took the message but answered after our timeout, and the breaker opened: the
    retry waits for this channel (same idempotency key) instead of going out on the fallback
    too, which would reach the customer twice. A message whose send was answered with an
    error (a 503) is rerouted as before."""
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    other = FakeVendor().start()
    try:
        backup = ChannelFactory(name="backup", kind="in_app", provider="webhook",
                                settings={"url": other.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK"})
        main = ChannelFactory(name="main", kind="in_app", provider="webhook", breaker_threshold=1, fallback=backup,
                              breaker_cooldown_s=600,
                              settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK", "timeout": 0.5})
        vendor.plan(Plan(200, {"id": "late"}, delay=1.2))  # processed, answered after our timeout
        [late] = record(main, people[:1], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
        deliveries_dispatch(delivery_ids=[late.pk])
        late.refresh_from_db()
        assert (late.status, late.reason) == ("deferred", "retry") and late.notes["unanswered"] is True

        deliveries_dispatch_due(now=late.next_attempt_at + timedelta(seconds=1))

        late.refresh_from_db()
        assert (late.status, late.reason, late.channel_id) == ("deferred", "breaker_open", main.pk)
        assert "may have arrived" in late.error
        assert len(vendor.requests) == 1 and other.requests == []

        # answered with an error: rerouted
        ChannelBreaker.objects.filter(channel=main).delete()
        vendor.plan(Plan(503, {"error": "busy"}))
        [refused] = record(main, people[1:2], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
        deliveries_dispatch(delivery_ids=[refused.pk])
        refused.refresh_from_db()
        deliveries_dispatch_due(now=refused.next_attempt_at + timedelta(seconds=1))
        refused.refresh_from_db()
        assert (refused.status, refused.channel_id) == ("sent", backup.pk)
    finally:
        other.stop()


def test_refused_credentials_open_the_breaker_instead_of_failing_every_message(
        vendor, people, monkeypatch, django_capture_on_commit_callbacks):
    """A rotated API key (401 for every call) is the channel's problem, not the messages': they
    wait behind the open breaker for someone to fix the secret, instead of all ending `failed`."""
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    hook = ChannelFactory(name="hook", kind="in_app", provider="webhook", breaker_threshold=2,
                          settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK"})
    vendor.default = Plan(401, {"error": "invalid api key"})
    deliveries = record(hook, people, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    assert len(vendor.requests) == 2  # the breaker opened at the second refusal
    assert status(deliveries) == [("deferred", "retry")] * 2 + [("deferred", "breaker_open")] * 3
    assert "credentials" in Delivery.objects.get(pk=deliveries[0].pk).error
    assert ChannelBreaker.objects.get(channel=hook).state == "open"


def test_an_smtp_server_asking_for_the_channels_login_does_not_fail_the_messages(
        email, people, smtp, django_capture_on_commit_callbacks):
    """530 "authentication required" (a relay whose password was rotated, or that now wants a
    login): every message would fail alike, so the breaker opens and they wait."""
    smtp.mail_reply = "530 5.7.0 Authentication required"
    email.breaker_threshold = 2
    email.save()
    deliveries = record(email, people[:3], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    assert smtp.messages == []
    assert status(deliveries) == [("deferred", "retry")] * 2 + [("deferred", "breaker_open")]
    assert "credentials" in Delivery.objects.get(pk=deliveries[0].pk).error


@provider
class OutlivedLease(WebhookProvider):
    """A worker so slow that its claim's lease passes while it sends: the first message's send
    sees the sweeper defer the batch (nothing marked yet), the second sees another worker claim
    the first message again."""

    name = "outlived_lease_for_tests"

    def send(self, message):
        from channels_app.services.claim import deliveries_claim
        from channels_app.services.dispatch import deliveries_lease_expire

        later = timezone.now() + timedelta(seconds=settings.DELIVERY_SENDING_LEASE_S + 1)
        if message.to == "p0":
            deliveries_lease_expire(now=later)
        else:
            deliveries_claim(ids=[self.settings["first"]], now=later)
        return super().send(message)


def test_the_results_of_a_worker_that_outlived_its_lease_leave_the_next_claim_alone(
        vendor, people, monkeypatch, django_capture_on_commit_callbacks):
    """The slow worker's answers come after its lease: its late mark of the first message landed on
    a deferred row, another worker then claimed it (no mark of its own yet). The slow worker's
    results must not record that claim as sent - with no send moment, caps would never count it."""
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    channel = ChannelFactory(name="hook", kind="in_app", provider="outlived_lease_for_tests",
                             settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK"})
    first, second = record(channel, people[:2], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    channel.settings = {**channel.settings, "first": first.pk}
    channel.save()

    deliveries_dispatch(delivery_ids=[first.pk, second.pk])

    row = Delivery.objects.get(pk=first.pk)
    assert (row.status, row.sent_at, row.accepted_at) == ("sending", None, None)  # the other worker's claim
    assert row.attempts == 2


@provider
class OutlivedLeaseThenAnswer(WebhookProvider):
    """A worker that outlived its lease (the sweeper deferred its message, another worker claimed
    it again) and then got its answer: the vendor took the message, or an error."""

    name = "outlived_lease_then_answer_for_tests"

    def send(self, message):
        from channels_app.providers import TransientError
        from channels_app.services.claim import deliveries_claim
        from channels_app.services.dispatch import deliveries_lease_expire

        later = timezone.now() + timedelta(seconds=settings.DELIVERY_SENDING_LEASE_S + 1)
        deliveries_lease_expire(now=later)
        deliveries_claim(ids=[message.delivery_id], now=later)
        if self.settings["answer"] == "error":
            raise TransientError("read timed out")
        return super().send(message)


@pytest.mark.parametrize("answer", ["ok", "error"])
def test_the_answer_of_a_worker_that_outlived_its_lease_leaves_the_next_claim_alone(
        vendor, people, monkeypatch, answer, django_capture_on_commit_callbacks):
    """Neither its mark nor its results touch the row the other worker now holds: the other worker's
    own answer decides (before, an error deferred the row under it, and an acceptance marked it
    sent while the other worker was sending it again)."""
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    channel = ChannelFactory(name="hook", kind="in_app", provider="outlived_lease_then_answer_for_tests",
                             settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK", "answer": answer})
    [message] = record(channel, people[:1], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[message.pk])

    row = Delivery.objects.get(pk=message.pk)
    assert (row.status, row.attempts, row.accepted_at, row.sent_at) == ("sending", 2, None, None)
