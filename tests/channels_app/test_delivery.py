"""Reliable delivery against a real HTTP server that fails on demand: retries with backoff,
Retry-After, permanent errors, no duplicates, the circuit breaker and its fallback, pauses,
signed status callbacks."""

from __future__ import annotations

import time
from datetime import timedelta
from urllib.parse import urlparse

import pytest
from django.utils import timezone

from channels_app.models import ChannelBreaker, Delivery, DeliveryAttempt
from channels_app.services import deliveries_dispatch, deliveries_dispatch_due, delivery_dispatch, message_send
from journeys.models import Event
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory, topic
from tests.channels_app.servers import Plan
from tests.channels_app.twilio import twilio_post
from channels_app.views import twilio_signature

pytestmark = pytest.mark.django_db


@pytest.fixture
def sms(vendor, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "tw-secret")
    return ChannelFactory(name="sms", kind="sms", provider="twilio_sms", retry_base_s=10, max_attempts=4,
                          breaker_threshold=2, breaker_cooldown_s=60,
                          settings={"base_url": vendor.url, "account_sid": "AC1", "from_number": "+15550000",
                                    "auth_token_env": "JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "timeout": 1})


@pytest.fixture
def bea():
    return CustomerFactory(external_id="bea", email="bea@example.com", phone="+15550001", traits={"first_name": "Bea"})


@pytest.fixture
def template():
    return TemplateFactory(topic=topic("product_updates"), body="Hi {{ profile.first_name }}")


def send(channel, customer, template, key, on_commit=None):
    def call():
        return message_send(customer=customer, template=template, channel=channel, idempotency_key=key, context={})

    if on_commit is None:
        return call()
    with on_commit():
        delivery = call()
    delivery.refresh_from_db()
    return delivery


def test_sms_is_a_twilio_style_form_post(sms, bea, template, vendor, on_commit):
    delivery = send(sms, bea, template, "k", on_commit)

    [request] = vendor.requests
    assert request.path == "/2010-04-01/Accounts/AC1/Messages.json"
    assert request.headers["Authorization"] == "Basic QUMxOnR3LXNlY3JldA=="  # AC1:tw-secret
    form = request.form()
    assert (form["To"], form["From"], form["Body"]) == ("+15550001", "+15550000", "Hi Bea")
    assert "/channels/status/" in form["StatusCallback"]
    assert (delivery.status, delivery.provider_message_id, delivery.attempts) == ("sent", "SM123", 1)
    assert delivery.latency_ms is not None and delivery.sent_at


def test_transient_errors_are_retried_with_backoff_then_sent_once(sms, bea, template, vendor, on_commit):
    sms.breaker_threshold = 5
    sms.save()
    vendor.fail(2, status=500)

    delivery = send(sms, bea, template, "k", on_commit)
    assert (delivery.status, delivery.reason, delivery.attempts) == ("deferred", "retry", 1)
    first_delay = (delivery.next_attempt_at - delivery.claimed_at).total_seconds()
    assert 5 <= first_delay <= 10  # base 10s, jittered

    assert deliveries_dispatch_due(now=delivery.next_attempt_at - timedelta(seconds=1)) == 0  # not yet due
    deliveries_dispatch_due(now=delivery.next_attempt_at)
    delivery.refresh_from_db()
    second_delay = (delivery.next_attempt_at - delivery.claimed_at).total_seconds()
    assert delivery.attempts == 2 and 10 <= second_delay <= 20  # doubled

    deliveries_dispatch_due(now=delivery.next_attempt_at)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 3)
    assert len(vendor.requests) == 3
    assert len({r.headers["I-Twilio-Idempotency-Token"] for r in vendor.requests}) == 1
    assert list(DeliveryAttempt.objects.order_by("id").values_list("ok", "status_code")) == [
        (False, 500), (False, 500), (True, 200)]
    deliveries_dispatch_due(now=timezone.now() + timedelta(days=1))
    assert len(vendor.requests) == 3


def test_429_honours_retry_after(sms, bea, template, vendor, on_commit):
    vendor.plan(Plan(429, {"message": "slow down"}, headers={"Retry-After": "120"}))

    delivery = send(sms, bea, template, "k", on_commit)

    wait = (delivery.next_attempt_at - delivery.claimed_at).total_seconds()
    assert delivery.status == "deferred" and 120 <= wait <= 125
    deliveries_dispatch_due(now=delivery.claimed_at + timedelta(seconds=60))
    assert len(vendor.requests) == 1
    deliveries_dispatch_due(now=delivery.next_attempt_at)
    delivery.refresh_from_db()
    assert delivery.status == "sent" and len(vendor.requests) == 2


@pytest.mark.parametrize(("retry_after", "at_least", "at_most"), [
    ("1e999", 86400, 86400 + 5),  # further out than anything: honoured for a day
    ("soonish", 5, 10),  # unreadable: the backoff alone (retry_base_s 10, jitter)
])
def test_a_retry_after_nothing_can_wait_for_falls_back_to_a_bounded_delay(sms, bea, template, vendor, on_commit,
                                                                          retry_after, at_least, at_most):
    vendor.plan(Plan(429, {"message": "slow down"}, headers={"Retry-After": retry_after}))

    delivery = send(sms, bea, template, "k", on_commit)

    wait = (delivery.next_attempt_at - delivery.claimed_at).total_seconds()
    assert delivery.status == "deferred" and at_least <= wait <= at_most + 1


def test_timeout_is_transient(sms, bea, template, vendor, on_commit):
    vendor.plan(Plan(200, {"sid": "late"}, delay=2.5))
    delivery = send(sms, bea, template, "k", on_commit)
    assert (delivery.status, delivery.reason) == ("deferred", "retry")
    assert "timed out" in delivery.error.lower() or "timeout" in delivery.error.lower()


def test_an_answer_trickled_a_byte_a_second_times_out_at_the_channel_timeout_and_the_others_go_on(
        sms, bea, template, vendor, django_capture_on_commit_callbacks):
    # given a vendor that sends its headers at once and then one answer's body a byte a second
    # (each read comes well inside the channel's 1 s timeout), and two messages to send
    vendor.plan(Plan(200, {"sid": "SM-slow-answer"}, trickle=1.0))
    cy = CustomerFactory(external_id="cy", phone="+15550002", traits={"first_name": "Cy"})
    with django_capture_on_commit_callbacks(execute=False):
        queued = [send(sms, customer, template, key) for customer, key in ((bea, "a"), (cy, "b"))]

    # when the dispatcher sends them
    started = time.monotonic()
    deliveries_dispatch(delivery_ids=[d.pk for d in queued])
    elapsed = time.monotonic() - started

    # then the trickled answer times out after about the channel's timeout, not the body's 14 s, and
    # the other message is sent meanwhile; its status (200) had come, so the vendor took it: it is
    # sent (its id was in the body that did not come), never sent again
    rows = {d.pk: d for d in Delivery.objects.filter(pk__in=[d.pk for d in queued])}
    assert elapsed < 5
    assert sorted((d.status, d.provider_message_id) for d in rows.values()) == [("sent", ""), ("sent", "SM123")]
    deliveries_dispatch_due(now=timezone.now() + timedelta(hours=1))
    assert len(vendor.requests) == 2


def test_an_answer_that_never_came_is_retried_with_the_same_idempotency_key_once(
        sms, bea, template, vendor, on_commit):
    # given a vendor that takes a message and answers after the channel's timeout (1 s)
    vendor.plan(Plan(201, {"sid": "SM-late"}, delay=1.5))

    # when the message is sent: no answer, so it may have arrived: unanswered, waiting for a retry
    delivery = send(sms, bea, template, "k", on_commit)
    assert (delivery.status, delivery.reason, delivery.notes.get("unanswered")) == ("deferred", "retry", True)

    # then its retry goes to the same vendor with the same idempotency key, once
    deliveries_dispatch_due(now=delivery.next_attempt_at)
    delivery.refresh_from_db()
    assert delivery.status == "sent" and len(vendor.requests) == 2
    tokens = [r.headers["I-Twilio-Idempotency-Token"] for r in vendor.requests]
    assert tokens == [delivery.idempotency_key] * 2


def test_permanent_4xx_is_not_retried(sms, bea, template, vendor, on_commit):
    vendor.fail(1, status=400)
    delivery = send(sms, bea, template, "k", on_commit)
    deliveries_dispatch_due(now=timezone.now() + timedelta(days=1))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason, delivery.attempts) == ("failed", "permanent_error", 1)
    assert len(vendor.requests) == 1
    assert not ChannelBreaker.objects.filter(channel=sms, consecutive_failures__gt=0).exists()  # not an outage
    assert Event.objects.filter(name="Message Failed", customer=bea).count() == 1


def test_gives_up_after_max_attempts(sms, bea, template, vendor, on_commit):
    sms.max_attempts, sms.breaker_threshold = 2, 10
    sms.save()
    vendor.fail(5, status=503)
    delivery = send(sms, bea, template, "k", on_commit)
    deliveries_dispatch_due(now=delivery.next_attempt_at)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason, delivery.attempts) == ("failed", "attempts_exhausted", 2)


def test_no_duplicate_send_for_the_same_key_or_a_repeated_task(sms, bea, template, vendor, on_commit):
    first = send(sms, bea, template, "run:1:sms:1", on_commit)
    again = send(sms, bea, template, "run:1:sms:1", on_commit)
    delivery_dispatch(delivery_id=first.pk)  # a redelivered task
    deliveries_dispatch_due(now=timezone.now() + timedelta(hours=1))

    assert again.pk == first.pk
    assert Delivery.objects.count() == 1 and len(vendor.requests) == 1


def test_a_row_claimed_by_another_worker_is_not_sent_again(sms, bea, template, vendor, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        delivery = send(sms, bea, template, "k")
    Delivery.objects.filter(pk=delivery.pk).update(status="sending", claimed_at=timezone.now())

    delivery_dispatch(delivery_id=delivery.pk)
    deliveries_dispatch_due(now=timezone.now() + timedelta(minutes=5))
    assert vendor.requests == []

    # its worker died: after the lease the sweeper sends it (with the same idempotency key)
    deliveries_dispatch_due(now=timezone.now() + timedelta(minutes=11))
    delivery.refresh_from_db()
    assert delivery.status == "sent" and len(vendor.requests) == 1
    assert vendor.requests[0].headers["I-Twilio-Idempotency-Token"] == "k"


def test_breaker_opens_falls_back_then_a_probe_closes_it(sms, bea, template, vendor, smtp, on_commit,
                                                         django_capture_on_commit_callbacks):
    email = ChannelFactory(name="email", kind="email", provider="smtp")
    sms.fallback = email
    sms.save()
    vendor.fail(2, status=503)

    send(sms, bea, template, "a", on_commit)
    send(sms, bea, template, "b", on_commit)
    breaker = ChannelBreaker.objects.get(channel=sms)
    assert (breaker.state, breaker.consecutive_failures) == ("open", 2)

    rerouted = send(sms, bea, template, "c", on_commit)
    assert (rerouted.status, rerouted.channel.name, rerouted.requested_channel.name) == ("sent", "email", "sms")
    assert rerouted.to == "bea@example.com" and rerouted.notes["rerouted"][0]["why"] == "breaker open"
    assert [m["To"] for m in smtp.messages] == ["bea@example.com"]
    assert len(vendor.requests) == 2  # nothing more went to the failing provider

    opened_at = breaker.opened_at
    with django_capture_on_commit_callbacks(execute=False):
        probe = send(sms, bea, template, "d")
    probe = delivery_dispatch(delivery_id=probe.pk, now=opened_at + timedelta(seconds=61))  # half-open probe

    assert (probe.status, probe.channel.name) == ("sent", "sms")
    assert ChannelBreaker.objects.get(channel=sms).state == "closed"
    assert len(vendor.requests) == 3


def test_open_breaker_without_fallback_waits_and_a_failed_probe_reopens(sms, bea, template, vendor, on_commit):
    vendor.fail(3, status=500)
    send(sms, bea, template, "a", on_commit)
    send(sms, bea, template, "b", on_commit)
    opened_at = ChannelBreaker.objects.get(channel=sms).opened_at

    waiting = send(sms, bea, template, "c", on_commit)
    assert (waiting.status, waiting.reason) == ("deferred", "breaker_open")
    assert waiting.next_attempt_at == opened_at + timedelta(seconds=60)
    assert len(vendor.requests) == 2

    delivery_dispatch(delivery_id=waiting.pk, now=opened_at + timedelta(seconds=61))  # probe fails
    breaker = ChannelBreaker.objects.get(channel=sms)
    assert breaker.state == "open" and breaker.opened_at == opened_at + timedelta(seconds=61)

    deliveries_dispatch_due(now=opened_at + timedelta(seconds=200))
    assert Delivery.objects.filter(status="sent").count() == 3
    assert ChannelBreaker.objects.get(channel=sms).state == "closed"


def test_paused_channel_holds_sends_without_losing_them(sms, bea, template, vendor, on_commit):
    from channels_app.services import channel_pause_set
    from tests.factories import UserFactory

    ops = UserFactory(is_superuser=True)
    channel_pause_set(channel=sms, paused=True, actor=ops, reason="vendor incident")
    delivery = send(sms, bea, template, "k", on_commit)
    assert (delivery.status, delivery.reason) == ("deferred", "paused") and vendor.requests == []
    held_at = delivery.updated_at

    # a held message is not claimed and written again every minute while the pause lasts
    assert deliveries_dispatch_due(now=timezone.now() + timedelta(minutes=5)) == 0
    delivery.refresh_from_db()
    assert delivery.updated_at == held_at and vendor.requests == []

    with on_commit():
        channel_pause_set(channel=sms, paused=False, actor=ops, reason="vendor back")
    delivery.refresh_from_db()  # released at once by the resume, not at a recheck
    assert delivery.status == "sent" and len(vendor.requests) == 1
    assert [h.history_change_reason for h in sms.history.order_by("history_date")][-2:] == ["vendor incident",
                                                                                             "vendor back"]


def test_a_long_pause_looks_at_its_held_messages_less_and_less_often(sms, bea, template, vendor, on_commit):
    """Given a paused channel holding a message, when its hourly safety-net rechecks find the
    channel still paused, then each waits as long again as the message has been held (1 h, 1 h,
    2 h, 4 h...), at most a day: a week's pause rewrites it about 10 times, not 168. The resume
    still sends it at once."""
    from channels_app.services import channel_pause_set
    from tests.factories import UserFactory

    ops = UserFactory(is_superuser=True)
    channel_pause_set(channel=sms, paused=True, actor=ops, reason="vendor incident")
    delivery = send(sms, bea, template, "k", on_commit)
    held_at = delivery.claimed_at or timezone.now()
    assert (delivery.status, delivery.reason) == ("deferred", "paused")
    waits, rewrites, now = [], 0, delivery.next_attempt_at
    while now < held_at + timedelta(days=7):
        rewrites += deliveries_dispatch_due(now=now) > 0
        delivery.refresh_from_db()
        assert (delivery.status, delivery.reason) == ("deferred", "paused")
        waits.append(round((delivery.next_attempt_at - now).total_seconds() / 3600, 1))
        now = delivery.next_attempt_at
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0] and max(waits) == 24.0, waits
    assert rewrites <= 12 and vendor.requests == []

    with on_commit():
        channel_pause_set(channel=sms, paused=False, actor=ops, reason="vendor back")
    delivery.refresh_from_db()
    assert delivery.status == "sent" and len(vendor.requests) == 1


@pytest.mark.parametrize("back", ["fallback resumed", "channel enabled again"])
def test_a_disabled_channel_whose_fallback_is_paused_holds_its_messages_until_either_is_back(
        sms, bea, template, vendor, on_commit, django_capture_on_commit_callbacks, back):
    """Given an email fallback that ops paused and an SMS queued before SMS was disabled, when it
    is dispatched it waits (deferred, not suppressed: a pause holds, it never drops), on its own
    channel; the fallback's resume sends it there at once, or SMS enabled again sends it by SMS
    at the hourly recheck. Once either way."""
    from channels_app.services import channel_pause_set
    from tests.factories import UserFactory

    ops = UserFactory(is_superuser=True)
    email = ChannelFactory(name="email", kind="email", provider="console")
    sms.fallback = email
    sms.save()
    with django_capture_on_commit_callbacks(execute=False):  # its send task is dropped
        queued = message_send(customer=bea, template=template, channel=sms, idempotency_key="k", context={})
    channel_pause_set(channel=email, paused=True, actor=ops, reason="template review")
    sms.enabled = False
    sms.save()

    delivery_dispatch(delivery_id=queued.pk)
    queued.refresh_from_db()
    assert (queued.status, queued.reason, queued.channel_id) == ("deferred", "paused", sms.pk)
    assert "sms is disabled and its fallback email is paused" in queued.error

    if back == "fallback resumed":
        with on_commit():
            channel_pause_set(channel=email, paused=False, actor=ops, reason="reviewed")
        queued.refresh_from_db()  # released at once by the resume
        assert (queued.status, queued.channel_id, queued.requested_channel_id) == ("sent", email.pk, sms.pk)
        assert queued.notes["rerouted"][0]["why"] == "channel disabled" and vendor.requests == []
    else:
        sms.enabled = True
        sms.save()
        deliveries_dispatch_due(now=timezone.now() + timedelta(hours=1, minutes=1))
        queued.refresh_from_db()
        assert (queued.status, queued.channel_id) == ("sent", sms.pk) and len(vendor.requests) == 1


def test_resuming_a_channel_in_the_admin_releases_what_its_pause_held(sms, bea, template, vendor, on_commit,
                                                                      admin_client):
    """(Only the Resume action resumes: a save of the channel's page or a revert from its history
    keeps the pause, tests/channels_app/test_shared_config_pages.py.)"""
    from django.urls import reverse

    changelist = reverse("admin:channels_app_channel_changelist")
    admin_client.post(changelist, {"action": "pause", "_selected_action": [sms.pk], "reason": "incident"})
    sms.refresh_from_db()
    assert sms.paused
    delivery = send(sms, bea, template, "k", on_commit)
    assert (delivery.status, delivery.reason) == ("deferred", "paused")

    with on_commit():
        admin_client.post(changelist, {"action": "resume", "_selected_action": [sms.pk], "reason": "over"})

    delivery.refresh_from_db()
    assert delivery.status == "sent" and len(vendor.requests) == 1


def test_a_safety_net_recheck_sends_what_a_pause_lifted_by_hand_held(sms, bea, template, vendor, on_commit):
    """A channel resumed behind the product's back (a database edit) still sends, at the hourly recheck."""
    sms.paused = True
    sms.save()
    delivery = send(sms, bea, template, "k", on_commit)
    sms.paused = False
    sms.save()

    deliveries_dispatch_due(now=timezone.now() + timedelta(minutes=61))

    delivery.refresh_from_db()
    assert delivery.status == "sent" and len(vendor.requests) == 1


def test_channel_rate_limit_defers_the_excess(sms, bea, template, vendor, on_commit):
    sms.rate_limit_per_minute = 1
    sms.save()
    send(sms, bea, template, "a", on_commit)
    second = send(sms, bea, template, "b", on_commit)
    assert (second.status, second.reason) == ("deferred", "rate_limit")
    deliveries_dispatch_due(now=second.next_attempt_at)
    second.refresh_from_db()
    assert second.status == "sent"


def test_signed_status_callback_records_delivery_once(sms, bea, template, vendor, on_commit, client):
    delivery = send(sms, bea, template, "k", on_commit)
    url = vendor.requests[0].form()["StatusCallback"]
    callback = urlparse(url).path

    for _ in range(2):
        assert twilio_post(client, url, {"MessageStatus": "delivered", "MessageSid": "SM123"},
                           token="tw-secret").status_code == 200
    tampered = callback[:-5] + ("x" if callback[-5] != "x" else "y") + callback[-4:]
    assert client.post(tampered, {"MessageStatus": "failed"}).status_code == 400

    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.delivered_at
    assert Event.objects.filter(name="Message Delivered", customer=bea).count() == 1
    assert not Event.objects.filter(name="Message Failed").exists()


@pytest.mark.parametrize("late", [{"MessageStatus": "undelivered", "ErrorCode": "30005"},
                                  {"MessageStatus": "failed"}, {"MessageStatus": "bounced"}])
def test_a_failure_reported_after_delivered_is_kept_aside_and_the_message_stays_delivered(
        sms, bea, template, vendor, on_commit, client, late):
    # given a sent message the vendor reported delivered
    delivery = send(sms, bea, template, "k", on_commit)
    url = vendor.requests[0].form()["StatusCallback"]
    assert twilio_post(client, url, {"MessageStatus": "delivered"}, token="tw-secret").json() == {
        "ok": True, "status": "delivered"}
    delivered_at = Delivery.objects.get(pk=delivery.pk).delivered_at

    # when a contradictory failure comes late, and then the delivered receipt again
    first = twilio_post(client, url, late, token="tw-secret")
    again = twilio_post(client, url, {"MessageStatus": "delivered"}, token="tw-secret")

    # then the message stays delivered throughout: the failure is noted, with no event or status change
    assert first.json() == again.json() == {"ok": True, "status": "delivered"}
    delivery.refresh_from_db()
    assert (delivery.status, delivery.delivered_at, delivery.error) == ("delivered", delivered_at, "")
    [receipt] = delivery.notes["late_receipts"]
    # (undelivered with 30005, an unknown number, is a bounce)
    assert receipt["status"] == {"undelivered": "bounced"}.get(late["MessageStatus"], late["MessageStatus"])
    assert not Event.objects.filter(name__in=["Message Failed", "Message Bounced"]).exists()
    assert Event.objects.filter(name="Message Delivered", customer=bea).count() == 1


def test_bounce_callback_as_json(sms, bea, template, vendor, on_commit, client):
    send(sms, bea, template, "k", on_commit)
    url = vendor.requests[0].form()["StatusCallback"]
    response = twilio_post(client, url, {"status": "bounced", "detail": "mailbox full"}, token="tw-secret", json=True)
    assert response.json() == {"ok": True, "status": "bounced"}
    assert Event.objects.get(name="Message Bounced").properties["detail"] == "mailbox full"


@pytest.mark.parametrize(("body", "form", "message"), [
    (b'{"status": "bounced", "detail": NaN}', False, "detail: is not a finite number"),
    (b'{"status": "bounced", "detail": "full\\u0000box"}', False, "detail: contains a NUL character"),
    (b'{"status": "bounced", "detail": "full\\udc00box"}', False, "detail: contains text that is not valid Unicode"),
    ({"MessageStatus": "failed", "ErrorCode": "30\x0003"}, True, "status/detail: contains a NUL character"),
])
def test_a_status_callback_a_database_cannot_store_is_a_400_naming_the_field(sms, bea, template, vendor, on_commit,
                                                                              client, body, form, message):
    # given a sent message and its signed status callback
    delivery = send(sms, bea, template, "k", on_commit)
    url = vendor.requests[0].form()["StatusCallback"]

    # when the provider reports a bounce holding NaN, NUL or a lone surrogate
    response = twilio_post(client, url, body, token="tw-secret") if form else client.generic(
        "POST", urlparse(url).path, body, content_type="application/json",
        HTTP_X_TWILIO_SIGNATURE=twilio_signature(auth_token="tw-secret", url=url, params={}))

    # then it is a 400 naming the field, and the delivery is as it was
    assert response.status_code == 400 and message in response.content.decode()
    delivery.refresh_from_db()
    assert delivery.status == "sent" and not Event.objects.filter(name__in=["Message Bounced", "Message Failed"]).exists()


@pytest.mark.parametrize("sid", ["SM\x00bad", "SM\udc00bad", float("nan")])
def test_a_provider_answer_no_database_stores_does_not_lose_the_sent_message(sms, bea, template, vendor, on_commit,
                                                                              sid):
    # given a provider that accepts the message but answers with an id holding NUL, a lone surrogate, or NaN
    vendor.plan(Plan(200, {"sid": sid}))

    # when the message is sent
    delivery = send(sms, bea, template, "k", on_commit)

    # then it is recorded as sent once (the unusable id is not kept) and not sent again
    assert delivery.status == "sent" and delivery.provider_message_id == "" and len(vendor.requests) == 1


def test_admin_requeues_a_failed_delivery_with_the_same_key(sms, bea, template, vendor, on_commit, admin_client,
                                                             django_capture_on_commit_callbacks):
    vendor.fail(1, status=400)
    delivery = send(sms, bea, template, "k", on_commit)
    assert delivery.status == "failed"

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post("/admin/channels_app/delivery/",
                                     {"action": "requeue", "_selected_action": [delivery.pk], "post": "yes"})

    assert response.status_code == 302
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.notes["requeued"]) == ("sent", 1, ["admin:admin"])
    assert [r.headers["I-Twilio-Idempotency-Token"] for r in vendor.requests] == ["k", "k"]
