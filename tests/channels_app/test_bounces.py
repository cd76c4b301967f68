"""Hard bounces and complaints: an address that does not exist is recorded as bounced and not sent to
again (any message, receipts too, until the customer has another address); a spam complaint opts
the customer out of all but transactional messages on that channel."""

from __future__ import annotations

import pytest

from channels_app.models import Consent, Delivery
from channels_app.services.links import link_url
from channels_app.views import twilio_signature
from journeys.models import Event
from tests.channels_app.factories import ChannelFactory, CustomerFactory, sent_message
from tests.channels_app.twilio import twilio_post

pytestmark = pytest.mark.django_db


@pytest.fixture
def email(smtp):
    return ChannelFactory(name="email", kind="email", provider="smtp", settings={"from_email": "shop@shop.test"})


def send(channel, customer, on_commit, key, slug="product_updates"):
    return sent_message(channel, customer, on_commit, key, slug)


def test_a_550_5_1_1_is_a_bounce_and_the_address_is_not_tried_again(email, smtp, on_commit):
    # given a customer whose mailbox does not exist
    customer = CustomerFactory(external_id="b1", email="hard-b1@example.com")
    smtp.refuse["hard-b1@example.com"] = "550 5.1.1 user unknown"

    # when a receipt is sent to it
    first = send(email, customer, on_commit, "r1", slug="transactional")

    # then it is recorded as bounced, with Message Bounced, and the address is suppressed
    assert (first.status, first.reason) == ("bounced", "undeliverable") and "5.1.1" in first.error
    assert Event.objects.filter(name="Message Bounced", customer=customer).count() == 1
    # later messages, a journey's and a receipt, are suppressed without an RCPT, saying why
    later = [send(email, customer, on_commit, "j1"), send(email, customer, on_commit, "r2", slug="transactional")]
    assert [(d.status, d.reason) for d in later] == [("suppressed", "undeliverable")] * 2
    smtp.refuse.clear()
    assert smtp.messages == []

    # and once the customer has another address, messages go to it
    customer.email = "new-b1@example.com"
    customer.save()
    assert send(email, customer, on_commit, "j2").status == "sent"


def test_a_policy_refusal_is_a_failure_that_suppresses_nothing(email, smtp, on_commit):
    customer = CustomerFactory(external_id="b2", email="b2@example.com")
    smtp.refuse_next = ["554 5.7.1 message refused as spam"]

    first = send(email, customer, on_commit, "p1")

    assert (first.status, first.reason) == ("failed", "permanent_error")
    assert send(email, customer, on_commit, "p2").status == "sent"


@pytest.mark.parametrize("callback, bounced", [({"MessageStatus": "undelivered", "ErrorCode": "30005"}, True),
                                               ({"MessageStatus": "bounced"}, True),
                                               ({"MessageStatus": "undelivered", "ErrorCode": "30003"}, False)])
def test_an_sms_the_vendor_says_cannot_reach_the_number_suppresses_it(sms, vendor, on_commit, client, callback,
                                                                      bounced):
    customer = CustomerFactory(external_id="s1", phone="+15550000005")
    first = send(sms, customer, on_commit, "s1", slug="transactional")
    url = vendor.requests[0].form()["StatusCallback"]

    assert twilio_post(client, url, callback, token="tw").status_code == 200

    first.refresh_from_db()
    assert first.status == ("bounced" if bounced else "failed")
    after = send(sms, customer, on_commit, "s2", slug="transactional")
    assert (after.status, after.reason) == (("suppressed", "undeliverable") if bounced else ("sent", ""))


def test_a_complaint_opts_the_customer_out_of_marketing_on_that_channel(sms, vendor, on_commit, client):
    customer = CustomerFactory(external_id="c1", phone="+15550000006")
    send(sms, customer, on_commit, "c1")
    url = vendor.requests[0].form()["StatusCallback"]

    answer = twilio_post(client, url, {"status": "complained"}, token="tw", json=True)

    assert answer.status_code == 200
    assert Delivery.objects.get(idempotency_key="c1").notes["complaint"]["detail"] == "complained"
    assert (send(sms, customer, on_commit, "c2").reason) == "channel_opt_out"


def unsubscribe_from_all(client, customer, kind):
    """The customer's one-click "unsubscribe from all" of a channel kind (a message without a topic)."""
    path = link_url(purpose="unsubscribe", data={"c": customer.pk, "k": kind}).split("8000", 1)[1]
    assert client.post(path, {"List-Unsubscribe": "One-Click"}).status_code == 200


def email_consent(customer):
    return Consent.objects.get(customer=customer, channel_kind="email", topic__isnull=True)


def test_an_unsubscribe_after_a_bounce_holds_the_new_address_and_the_dead_one_stays_held(email, smtp, on_commit,
                                                                                         client):
    # given a customer whose mailbox bounced for good
    customer = CustomerFactory(external_id="o1", email="dead-o1@example.com")
    smtp.refuse["dead-o1@example.com"] = "550 5.1.1 user unknown"
    assert send(email, customer, on_commit, "o1-r1", slug="transactional").status == "bounced"

    # when the customer then unsubscribes from all email, and moves to a new address
    unsubscribe_from_all(client, customer, "email")
    customer.email = "new-o1@example.com"
    customer.save()

    # then the unsubscribe is recorded with its own source and history, and holds the new address
    consent = email_consent(customer)
    assert consent.status == "opted_out" and consent.source.startswith("one_click_unsubscribe hard_bounce:")
    reasons = list(consent.history.order_by("history_date").values_list("history_change_reason", flat=True))
    assert len(reasons) == 2 and reasons[0].startswith("hard bounce:") and reasons[1] == consent.source
    assert (send(email, customer, on_commit, "o1-m1").reason) == "channel_opt_out"
    # a receipt still reaches the new address; the dead one still gets nothing, receipts included
    assert send(email, customer, on_commit, "o1-r2", slug="transactional").status == "sent"
    customer.email = "dead-o1@example.com"
    customer.save()
    assert (send(email, customer, on_commit, "o1-r3", slug="transactional").reason) == "undeliverable"
    assert [m["To"] for m in smtp.messages] == ["new-o1@example.com"]


def test_a_bounce_after_an_unsubscribe_is_recorded_and_receipts_stop_hitting_the_dead_mailbox(email, smtp,
                                                                                            on_commit, client):
    # given a customer who unsubscribed from all email
    customer = CustomerFactory(external_id="o2", email="dead-o2@example.com")
    unsubscribe_from_all(client, customer, "email")
    smtp.refuse["dead-o2@example.com"] = "550 5.1.1 user unknown"

    # when a receipt bounces for good
    assert send(email, customer, on_commit, "o2-r1", slug="transactional").status == "bounced"

    # then the bounce is kept beside the opt-out: the next receipt is not tried on that mailbox
    later = send(email, customer, on_commit, "o2-r2", slug="transactional")
    assert (later.status, later.reason) == ("suppressed", "undeliverable")
    assert email_consent(customer).source.startswith("one_click_unsubscribe hard_bounce:")
    # and at a new address receipts go, marketing stays unsubscribed
    customer.email = "new-o2@example.com"
    customer.save()
    assert send(email, customer, on_commit, "o2-r3", slug="transactional").status == "sent"
    assert send(email, customer, on_commit, "o2-m1").reason == "channel_opt_out"


def inbound_stop(client, monkeypatch, sender):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_INBOUND_TOKEN", "in-secret")
    channel = ChannelFactory(name="sms-in", kind="sms", provider="console",
                             settings={"auth_token_env": "JOURNEYS_SECRET_TEST_INBOUND_TOKEN"})
    path = link_url(purpose="inbound", data={"ch": channel.pk}).split("8000", 1)[1]
    params = {"Body": "STOP", "To": "+15559999", "From": sender}
    signature = twilio_signature(auth_token="in-secret", url="http://testserver" + path, params=params)
    assert client.post(path, params, HTTP_X_TWILIO_SIGNATURE=signature).status_code == 200


def test_an_sms_stop_after_the_number_bounced_holds_the_customers_new_number(sms, vendor, on_commit, client,
                                                                            monkeypatch):
    # given a customer whose number the vendor said does not exist
    customer = CustomerFactory(external_id="o3", phone="+15550000031")
    send(sms, customer, on_commit, "o3-r1", slug="transactional")
    url = vendor.requests[0].form()["StatusCallback"]
    assert twilio_post(client, url, {"MessageStatus": "bounced"}, token="tw").status_code == 200

    # when a STOP comes from that number, and the profile moves to a new number
    inbound_stop(client, monkeypatch, "+15550000031")
    customer.phone = "+15550000032"
    customer.save()

    # then no SMS goes to the new number either: STOP holds every SMS, receipts included
    assert send(sms, customer, on_commit, "o3-m1").reason == "channel_opt_out"
    assert send(sms, customer, on_commit, "o3-r2", slug="transactional").reason == "channel_opt_out"
    consent = Consent.objects.get(customer=customer, channel_kind="sms", topic__isnull=True)
    assert consent.source.startswith("sms_keyword:STOP hard_bounce:")
    assert len(vendor.requests) == 1


def test_a_bounced_number_typed_with_00_is_refused_when_chosen_and_the_fallback_channel_sends(sms, vendor, email,
                                                                                             smtp, on_commit,
                                                                                             client):
    # given a profile whose number is typed with the international 00 prefix, and it bounced
    # (the vendor was sent it as +44...)
    customer = CustomerFactory(external_id="o4", phone="0044 20 7946 0022", email="o4@example.com")
    send(sms, customer, on_commit, "o4-r1", slug="transactional")
    assert vendor.requests[0].form()["To"] == "+442079460022"
    url = vendor.requests[0].form()["StatusCallback"]
    assert twilio_post(client, url, {"MessageStatus": "bounced"}, token="tw").status_code == 200

    # when a message is sent on SMS with email as the fallback
    sms.fallback = email
    sms.save()
    delivery = send(sms, customer, on_commit, "o4-r2", slug="transactional")

    # then the dead number is refused when the channel is chosen, and the email goes
    assert (delivery.channel.kind, delivery.status) == ("email", "sent")
    assert [m["To"] for m in smtp.messages] == ["o4@example.com"] and len(vendor.requests) == 1
