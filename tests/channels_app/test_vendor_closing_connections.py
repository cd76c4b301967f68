"""Vendors that close the connection after each answer (`Connection: close`, HTTP/1.0 servers,
many proxies and load balancers), with the body in TCP writes of its own after the headers:
each message they accept is recorded as sent, once, and the next one goes on a new connection.
(The connection closed by getresponse() used to close the socket under the unread body: EBADF,
recorded as unanswered and retried, so the customer got the message two or three times.)
An answer cut off after its status is judged by its status, unless its body decides."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from channels_app.models import Channel, Delivery, MessageTemplate, Topic
from channels_app.services import deliveries_dispatch, deliveries_dispatch_due, message_send
from journeys.choices import ApiScope
from tests.apiclient import Api, make_token
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory
from tests.channels_app.servers import Plan

pytestmark = pytest.mark.django_db

ANSWERS = {
    "connection-close": dict(close=True, pause=0.05),
    "http-1.0": dict(http10=True, pause=0.05),
    "chunked-close": dict(close=True, chunked=True, pause=0.03),
    "close-no-body": dict(no_body=True, pause=0.05),
    # closed halfway through the body: the vendor said 201, so it took the message (status decides)
    "cut-mid-body": dict(cut=True, pause=0.05),
}
LOST = ("close-no-body", "cut-mid-body")  # no vendor id: no body, or the id was in the part that did not come
BODY = {"id": "hook-77", "sid": "SM77"}


# a breaker that would open after a few failures would hide the retries (each one a second copy)
RETRIES = {"retry_base_s": 10, "breaker_threshold": 50}


@pytest.fixture
def hook(vendor, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    return ChannelFactory(name="hook", kind="webhook", provider="webhook", **RETRIES, settings={
        "url": vendor.url + "/hook", "secret_env": "JOURNEYS_SECRET_TEST_HOOK", "timeout": 2})


@pytest.fixture
def sms(vendor, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "tw")
    return ChannelFactory(name="sms", kind="sms", provider="twilio_sms", **RETRIES, settings={
        "base_url": vendor.url, "account_sid": "AC1", "from_number": "+15550000", "timeout": 2,
        "auth_token_env": "JOURNEYS_SECRET_TEST_TWILIO_TOKEN"})


def key_header(channel) -> str:
    return "I-Twilio-Idempotency-Token" if channel.provider == "twilio_sms" else "Idempotency-Key"


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("channel_name", ["sms", "hook"])
def test_each_message_a_closing_vendor_accepts_is_sent_once(
        request, vendor, answer, channel_name, django_capture_on_commit_callbacks):
    # given a vendor that accepts every message and then closes the connection, its answer's body
    # coming after the headers in writes of their own (or no body at all, or half of it)
    channel = request.getfixturevalue(channel_name)
    vendor.default = Plan(201, BODY, **ANSWERS[answer])
    people = [CustomerFactory(external_id=f"c{i}", phone=f"+1555010{i:04d}") for i in range(5)]
    template = TemplateFactory(channel_kind=channel.kind, body="Your order is on its way")
    with django_capture_on_commit_callbacks(execute=False):
        deliveries = [message_send(customer=c, template=template, channel=channel, idempotency_key=f"k-{c.external_id}",
                                   context={}) for c in people]

    # when the dispatcher sends them (the engine's deliveries task), and later runs what is due
    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])
    deliveries_dispatch_due(now=max(d.created_at for d in deliveries) + timedelta(hours=2))

    # then the vendor got one request per message, each on a connection of its own
    keys = Counter(r.headers[key_header(channel)] for r in vendor.requests)
    assert sorted(keys) == sorted(d.idempotency_key for d in deliveries) and set(keys.values()) == {1}
    assert len(set(vendor.ports)) == len(people)
    # and each is recorded as sent on the first attempt, with the vendor's id read from the body
    rows = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    assert {(d.status, d.attempts, d.error, bool(d.notes.get("unanswered"))) for d in rows} == {("sent", 1, "", False)}
    assert [d.provider_message_id for d in rows] == [vendor_id(channel, d, answer) for d in rows]


def vendor_id(channel, delivery, answer) -> str:
    """The id a delivery keeps: the vendor's, read from the answer's body (a made-up one without)."""
    if channel.provider == "twilio_sms":
        return "" if answer in LOST else BODY["sid"]
    return f"webhook-{delivery.pk}" if answer in LOST else BODY["id"]


@pytest.mark.parametrize("answer", ["connection-close", "chunked-close"])
def test_an_sms_through_the_messages_api_to_a_closing_vendor_is_sent_once(vendor, sms, answer, on_commit):
    # given a transactional SMS template and a vendor that closes the connection after answering
    topic, _ = Topic.objects.get_or_create(slug="receipts", defaults={"name": "Receipts", "transactional": True})
    Topic.objects.filter(pk=topic.pk).update(transactional=True)
    MessageTemplate.objects.create(name="receipt-sms", channel_kind="sms", topic=Topic.objects.get(pk=topic.pk),
                                   body="Order {{ journey.order_id }} confirmed")
    CustomerFactory(external_id="ada", phone="+15550109999")
    vendor.default = Plan(201, BODY, **ANSWERS[answer])
    _, token = make_token(ApiScope.SEND, name="shop")
    api = Api(token)

    # when the API sends it
    with on_commit():
        response = api.post("messages", {"idempotency_key": "order-1", "template": "receipt-sms", "user_id": "ada",
                                         "channel": "sms", "data": {"order_id": "A-1"}})

    # then the vendor got it once and its status says sent, with the vendor's id
    assert response.status_code == 202, response.body
    assert [r.form()["Body"] for r in vendor.requests] == ["Order A-1 confirmed"]
    status = api.get(f"messages/{response.body['delivery']['id']}").body
    assert (status["status"], status["attempts"]) == ("sent", 1)
    assert Delivery.objects.get().provider_message_id == "SM77" and Channel.objects.count() == 1


@pytest.mark.parametrize(("channel_name", "status", "unanswered"), [("chat", 200, True), ("sms", 503, False)])
def test_a_cut_off_answer_is_judged_by_its_status_unless_its_body_decides(
        request, vendor, channel_name, status, unanswered, django_capture_on_commit_callbacks):
    """A 503 whose body is cut off is a 503 (retried, and free to go to a fallback). Slack's 200
    may say {"ok": false}: when its body is cut off the message may or may not have gone, so it
    waits for a retry on its own channel (never rerouted to a fallback as well)."""
    channel = request.getfixturevalue(channel_name)
    vendor.default = Plan(status, {"ok": True, "ts": "1.2", "sid": "SM1"}, cut=True, pause=0.05)
    customer = CustomerFactory(external_id="c", phone="+15550100001", traits={"chat_id": "U1"})
    with django_capture_on_commit_callbacks(execute=False):
        delivery = message_send(customer=customer, template=TemplateFactory(channel_kind=channel.kind), channel=channel,
                                idempotency_key="k", context={})

    deliveries_dispatch(delivery_ids=[delivery.pk])

    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason) == ("deferred", "retry") and len(vendor.requests) == 1
    assert bool(delivery.notes.get("unanswered")) is unanswered
    expected = "HTTP 503: " if status == 503 else "(after the answer's status, HTTP 200; its body did not come in full)"
    assert expected in delivery.error
