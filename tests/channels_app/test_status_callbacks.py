"""The status callback endpoint (/channels/status/<token>/) as Twilio posts to it: signed form
bodies with Twilio's fields (MessageSid / CallSid, MessageStatus / CallStatus, ErrorCode), sent to
the StatusCallback URL the product gave the vendor (a real local HTTP server acting as Twilio)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from channels_app.models import Consent, Delivery
from channels_app.services import deliveries_dispatch_due
from journeys.models import Event, StreamDestination, StreamEvent
from journeys.services.stream_destinations import destination_save
from tests.channels_app.factories import ChannelFactory, CustomerFactory, sent_message
from tests.channels_app.servers import Plan
from tests.channels_app.twilio import twilio_post

pytestmark = pytest.mark.django_db


@pytest.fixture
def voice(vendor, monkeypatch):
    """A Twilio-style voice channel that dials a message at most twice (max_attempts 2)."""
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "tw")
    return ChannelFactory(name="voice", kind="voice", provider="twilio_voice", max_attempts=2, retry_base_s=10,
                          settings={"base_url": vendor.url, "account_sid": "AC1", "from_number": "+15550000",
                                    "auth_token_env": "JOURNEYS_SECRET_TEST_TWILIO_TOKEN"})


def send(channel, customer, on_commit, key, slug="transactional"):
    return sent_message(channel, customer, on_commit, key, slug)


def events(customer) -> list[str]:
    return list(Event.objects.filter(customer=customer).order_by("id").values_list("name", flat=True))


# --------------------------------------------------------------------------- voice (CallStatus)


def test_a_completed_call_is_delivered(voice, vendor, on_commit, client):
    # given a call Twilio placed (CallSid SM123)
    customer = CustomerFactory(external_id="v1", phone="+15550000101")
    delivery = send(voice, customer, on_commit, "v1")
    url = vendor.requests[0].form()["StatusCallback"]

    # when Twilio reports the call answered and ended
    answer = twilio_post(client, url, {"CallSid": "SM123", "CallStatus": "completed", "CallDuration": "12"},
                         token="tw")

    # then the message is delivered, with its event
    assert answer.json() == {"ok": True, "status": "delivered"}
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.delivered_at
    assert events(customer) == ["Message Sent", "Message Delivered"]


@pytest.mark.parametrize("word", ["busy", "no-answer"])
def test_a_busy_or_unanswered_call_is_dialled_again_then_fails_when_the_attempts_are_spent(voice, vendor, on_commit,
                                                                                          client, word):
    # given a call Twilio placed
    customer = CustomerFactory(external_id="v2", phone="+15550000102")
    delivery = send(voice, customer, on_commit, "v2")
    url = vendor.requests[0].form()["StatusCallback"]

    # when nobody took it
    assert twilio_post(client, url, {"CallSid": "SM123", "CallStatus": word}, token="tw").json()["status"] == "deferred"

    # then it waits for a new dial (the channel's backoff), no failure recorded yet
    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason, delivery.error) == ("deferred", "retry", word)
    assert events(customer) == ["Message Sent"]
    # and the new dial is a new call: its own idempotency token
    vendor.plan(Plan(201, {"sid": "CA2"}))
    deliveries_dispatch_due(now=delivery.next_attempt_at)
    assert len(vendor.requests) == 2
    first, second = (r.headers["I-Twilio-Idempotency-Token"] for r in vendor.requests)
    assert first != second
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider_message_id, delivery.attempts) == ("sent", "CA2", 2)

    # when the second call is not taken either (its last attempt), it fails for good, with one event
    assert twilio_post(client, url, {"CallSid": "CA2", "CallStatus": word}, token="tw").json()["status"] == "failed"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason, delivery.error) == ("failed", "attempts_exhausted", word)
    assert events(customer) == ["Message Sent", "Message Failed"]


def test_the_redialled_calls_own_callback_is_not_refused_while_the_dial_is_being_recorded(voice, vendor, on_commit,
                                                                                        client):
    # given a call that was busy and is being dialled again: between the claim and the record of the
    # new dial's answer the row is `sending`, and it no longer carries the old CallSid
    customer = CustomerFactory(external_id="rv1", phone="+15550000901")
    delivery = send(voice, customer, on_commit, "rv1")
    url = vendor.requests[0].form()["StatusCallback"]
    assert twilio_post(client, url, {"CallSid": "SM123", "CallStatus": "busy"}, token="tw").json()["status"] == "deferred"
    delivery.refresh_from_db()
    assert (delivery.provider_message_id, delivery.notes["previous_ids"]) == ("", ["SM123"])
    Delivery.objects.filter(pk=delivery.pk).update(status="sending")  # what the claim of the redial does

    # when a late callback of the earlier call comes, then it is refused, as any other message's
    assert twilio_post(client, url, {"CallSid": "SM123", "CallStatus": "completed"}, token="tw").status_code == 403

    # when Twilio reports the NEW call (CA2) before our record of its sid commits
    answer = twilio_post(client, url, {"CallSid": "CA2", "CallStatus": "completed"}, token="tw")

    # then it is taken (Twilio does not retry a refused callback: the outcome would be lost)
    assert answer.status_code == 200, answer.content
    delivery.refresh_from_db()
    assert delivery.status == "delivered"


def test_a_canceled_call_fails(voice, vendor, on_commit, client):
    customer = CustomerFactory(external_id="v3", phone="+15550000103")
    delivery = send(voice, customer, on_commit, "v3")
    url = vendor.requests[0].form()["StatusCallback"]

    for word in ("initiated", "ringing", "canceled"):
        twilio_post(client, url, {"CallSid": "SM123", "CallStatus": word}, token="tw")

    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason, delivery.error) == ("failed", "permanent_error", "canceled")
    assert events(customer) == ["Message Sent", "Message Failed"]


# --------------------------------------------------------------------------- SMS (MessageStatus)


def test_21610_in_a_callback_opts_the_customer_out_of_sms_as_stop_does(sms, vendor, on_commit, client):
    # given an SMS Twilio accepted
    customer = CustomerFactory(external_id="s1", phone="+15550000201")
    delivery = send(sms, customer, on_commit, "s1")
    url = vendor.requests[0].form()["StatusCallback"]

    # when Twilio reports it undelivered: the recipient unsubscribed (texted STOP to the sending number)
    answer = twilio_post(client, url, {"MessageSid": "SM123", "MessageStatus": "undelivered", "ErrorCode": "21610"},
                         token="tw")

    # then the message failed, the customer is out of every SMS, and the next one (a receipt) is not sent
    assert answer.json()["status"] == "failed"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason) == ("failed", "channel_opt_out")
    consent = Consent.objects.get(customer=customer, channel_kind="sms", topic__isnull=True)
    assert (consent.status, consent.source) == ("opted_out", "vendor_unsubscribed")
    later = send(sms, customer, on_commit, "s1-r2")
    assert (later.status, later.reason) == ("suppressed", "channel_opt_out")
    assert len(vendor.requests) == 1


def test_a_forged_or_misdirected_status_callback_is_refused_and_records_nothing(sms, vendor, on_commit, client):
    # given an SMS Twilio accepted as SM123
    customer = CustomerFactory(external_id="s2", phone="+15550000202")
    delivery = send(sms, customer, on_commit, "s2")
    url = vendor.requests[0].form()["StatusCallback"]
    bounce = {"MessageSid": "SM123", "MessageStatus": "undelivered", "ErrorCode": "30005"}

    # when a bounce comes with a garbage signature, none, one made with another token, or about another message
    refused = [twilio_post(client, url, bounce, token="tw", signature="Zm9yZ2VkIHNpZ25hdHVyZQ=="),
               twilio_post(client, url, bounce, token="tw", signature=""),
               twilio_post(client, url, bounce, token="not-the-token"),
               twilio_post(client, url, {**bounce, "MessageSid": "SM999"}, token="tw")]

    # then each is refused (403, saying why), and the message, the consent and the events are as they were
    assert [r.status_code for r in refused] == [403] * 4
    assert "X-Twilio-Signature" in refused[0].content.decode() and "SM999" in refused[3].content.decode()
    delivery.refresh_from_db()
    assert delivery.status == "sent"
    assert not Consent.objects.filter(customer=customer).exists()
    assert events(customer) == ["Message Sent"]
    # and the genuine callback is taken
    assert twilio_post(client, url, bounce, token="tw").json() == {"ok": True, "status": "bounced"}


def test_a_failure_after_a_bounce_records_no_event_and_no_stream_record(sms, vendor, on_commit, client, settings):
    # given a stream destination, and an SMS Twilio reported undeliverable (an unknown number)
    destination_save(destination=StreamDestination(name="warehouse", url=vendor.url + "/hook"), reason="test")
    customer = CustomerFactory(external_id="s3", phone="+15550000203")
    delivery = send(sms, customer, on_commit, "s3")
    url = vendor.requests[0].form()["StatusCallback"]
    assert twilio_post(client, url, {"MessageSid": "SM123", "MessageStatus": "undelivered", "ErrorCode": "30005"},
                       token="tw").json()["status"] == "bounced"

    # when a `failed` callback comes after it (and the bounce again)
    for params in ({"MessageStatus": "failed", "ErrorCode": "30003"},
                   {"MessageStatus": "undelivered", "ErrorCode": "30005"}):
        assert twilio_post(client, url, {"MessageSid": "SM123", **params}, token="tw").json()["status"] == "bounced"

    # then nothing more is recorded: no Message Failed event, no message.failed on the stream
    delivery.refresh_from_db()
    assert (delivery.status, delivery.error) == ("bounced", "30005")
    assert events(customer) == ["Message Sent", "Message Bounced"]
    assert list(StreamEvent.objects.filter(data__delivery_id=delivery.pk).exclude(type="message.sent")
                .values_list("type", flat=True)) == ["message.bounced"]


def test_a_status_callback_costs_few_queries(sms, vendor, on_commit, client):
    # given an SMS Twilio accepted
    customer = CustomerFactory(external_id="s4", phone="+15550000204")
    send(sms, customer, on_commit, "s4")
    url = vendor.requests[0].form()["StatusCallback"]

    # when Twilio reports it sent, then delivered (the two callbacks of every SMS)
    costs = {}
    for word in ("sent", "delivered"):
        with CaptureQueriesContext(connection) as queries:
            twilio_post(client, url, {"MessageSid": "SM123", "MessageStatus": word}, token="tw")
        costs[word] = len(queries.captured_queries)

    # then `sent` is one read besides the channel's, and `delivered` a locked read, one write and the event
    # (savepoints counted: the test runs in a transaction)
    assert costs["sent"] <= 2 and costs["delivered"] <= 12, costs
    assert Delivery.objects.get(idempotency_key="s4").status == "delivered"
