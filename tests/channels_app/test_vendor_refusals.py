"""What a vendor's refusal of a send says about the recipient, on the send path (a real local HTTP
server answering as Twilio's and FCM's APIs do): a dead number or push token is not tried again,
a number that texted STOP to the sender is opted out."""

from __future__ import annotations

import pytest

from channels_app.models import Consent
from journeys.models import Event
from tests.channels_app.factories import ChannelFactory, CustomerFactory, sent_message
from tests.channels_app.servers import Plan

pytestmark = pytest.mark.django_db

TWILIO_ERRORS = {
    21211: "Invalid 'To' Phone Number",
    21614: "'To' number is not a valid mobile number",
    21610: "Attempt to send to unsubscribed recipient",
}


def twilio_refusal(code: int) -> Plan:
    """Twilio's REST API answer refusing a message (HTTP 400 with its error code)."""
    return Plan(400, {"code": code, "message": TWILIO_ERRORS[code], "status": 400,
                      "more_info": f"https://www.twilio.com/docs/errors/{code}"})


def send(channel, customer, on_commit, key, slug="transactional"):
    return sent_message(channel, customer, on_commit, key, slug)


@pytest.mark.parametrize("code", [21211, 21614])
def test_an_invalid_or_non_mobile_number_twilio_refuses_bounces_and_is_not_tried_again(sms, vendor, on_commit, code):
    # given a number Twilio refuses as invalid / not mobile
    customer = CustomerFactory(external_id=f"n{code}", phone="+18665550100")
    vendor.plan(twilio_refusal(code))

    # when a receipt is sent to it, then another message
    first = send(sms, customer, on_commit, "r1")
    later = send(sms, customer, on_commit, "r2")

    # then the first bounced (Message Bounced), the number is suppressed, and the next is not sent
    assert (first.status, first.reason) == ("bounced", "undeliverable") and str(code) in first.error
    assert Event.objects.filter(customer=customer, name="Message Bounced").count() == 1
    assert (later.status, later.reason) == ("suppressed", "undeliverable")
    assert len(vendor.requests) == 1


def test_an_unsubscribed_recipient_twilio_refuses_is_opted_out_of_sms(sms, vendor, on_commit):
    # given a number that texted STOP to the sending number (Twilio 21610), held by two customers
    customer = CustomerFactory(external_id="u1", phone="+18885550100")
    household = CustomerFactory(external_id="u2", phone="+18885550100")
    vendor.plan(twilio_refusal(21610))

    # when a message is sent to it
    first = send(sms, customer, on_commit, "u1", slug="product_updates")

    # then it failed saying why, both are opted out of SMS as STOP does, and no SMS goes to the number again
    assert (first.status, first.reason) == ("failed", "channel_opt_out") and "21610" in first.error
    assert Event.objects.filter(customer=customer, name="Message Failed").count() == 1
    for person in (customer, household):
        consent = Consent.objects.get(customer=person, channel_kind="sms", topic__isnull=True)
        assert (consent.status, consent.source) == ("opted_out", "vendor_unsubscribed")
    later = [send(sms, customer, on_commit, "u1-r"), send(sms, household, on_commit, "u2-r")]
    assert [(d.status, d.reason) for d in later] == [("suppressed", "channel_opt_out")] * 2
    assert len(vendor.requests) == 1


def test_another_twilio_refusal_fails_the_message_and_suppresses_nothing(sms, vendor, on_commit):
    customer = CustomerFactory(external_id="o1", phone="+15550000301")
    vendor.plan(Plan(400, {"code": 21408, "message": "Permission to send an SMS has not been enabled", "status": 400}))

    first = send(sms, customer, on_commit, "o1")

    assert (first.status, first.reason) == ("failed", "permanent_error")
    assert send(sms, customer, on_commit, "o2").status == "sent"


# --------------------------------------------------------------------------- FCM

UNREGISTERED = Plan(404, {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
                                    "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                                 "errorCode": "UNREGISTERED"}]}})
INVALID_TOKEN = Plan(400, {"error": {
    "code": 400, "message": "The registration token is not a valid FCM registration token", "status": "INVALID_ARGUMENT",
    "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]}})
INVALID_PAYLOAD = Plan(400, {"error": {
    "code": 400, "message": "Invalid JSON payload received. Unknown name \"badge\"", "status": "INVALID_ARGUMENT",
    "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                 "fieldViolations": [{"field": "message.notification", "description": "Unknown name \"badge\""}]}]}})


@pytest.fixture
def push(vendor, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_FCM_TOKEN", "ya29.token")
    return ChannelFactory(name="push", kind="push", provider="fcm", settings={
        "base_url": vendor.url, "project_id": "shop", "access_token_env": "JOURNEYS_SECRET_TEST_FCM_TOKEN"})


@pytest.mark.parametrize("answer", [UNREGISTERED, INVALID_TOKEN], ids=["unregistered", "invalid-token"])
def test_a_push_token_fcm_no_longer_knows_is_dropped(push, vendor, on_commit, answer):
    # given a customer whose app was uninstalled (FCM: UNREGISTERED / not a valid registration token)
    customer = CustomerFactory(external_id="p1", traits={"push_token": "dead-token-1"})
    vendor.plan(answer)

    # when two pushes are sent
    first = send(push, customer, on_commit, "p1", slug="product_updates")
    later = send(push, customer, on_commit, "p2", slug="product_updates")

    # then the first bounced, the token is suppressed, and the second is not posted to FCM, saying why
    assert (first.status, first.reason) == ("bounced", "undeliverable")
    assert (later.status, later.reason) == ("suppressed", "undeliverable")
    assert len(vendor.requests) == 1
    # and once the app registers a new token, pushes go to it
    customer.traits = {"push_token": "fresh-token-2"}
    customer.save()
    assert send(push, customer, on_commit, "p3", slug="product_updates").status == "sent"
    assert vendor.requests[-1].json()["message"]["token"] == "fresh-token-2"


def test_after_a_dead_push_token_the_next_message_goes_to_the_fallback_channel(push, sms, vendor, on_commit):
    # given a push channel that falls back to SMS, and a customer whose push token is dead
    push.fallback = sms
    push.save()
    customer = CustomerFactory(external_id="p4", phone="+15550000401", traits={"push_token": "dead-token-4"})
    vendor.plan(UNREGISTERED)
    assert send(push, customer, on_commit, "p4").status == "bounced"

    # when the next message is sent on push
    later = send(push, customer, on_commit, "p5")

    # then it goes by SMS
    assert (later.status, later.channel.name) == ("sent", "sms")
    assert vendor.requests[-1].path.endswith("/Messages.json")


def test_an_fcm_refusal_of_the_payload_suppresses_no_token(push, vendor, on_commit):
    customer = CustomerFactory(external_id="p6", traits={"push_token": "good-token-6"})
    vendor.plan(INVALID_PAYLOAD)

    first = send(push, customer, on_commit, "p6", slug="product_updates")

    assert (first.status, first.reason) == ("failed", "permanent_error")
    assert send(push, customer, on_commit, "p7", slug="product_updates").status == "sent"
