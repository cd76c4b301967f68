"""Hard bounces and complaints: an address that does not exist is recorded as bounced and not sent to
again (any message, receipts too, until the customer has another address); a spam complaint opts
the customer out of all but transactional messages on that channel."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from channels_app.models import Delivery
from channels_app.services import message_send
from journeys.models import Event
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory, topic

pytestmark = pytest.mark.django_db


@pytest.fixture
def email(smtp):
    return ChannelFactory(name="email", kind="email", provider="smtp", settings={"from_email": "shop@shop.test"})


def send(channel, customer, on_commit, key, slug="product_updates"):
    with on_commit():
        delivery = message_send(customer=customer, template=TemplateFactory(topic=topic(slug)), channel=channel,
                                idempotency_key=key, context={})
    delivery.refresh_from_db()
    return delivery


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
    path = urlparse(vendor.requests[0].form()["StatusCallback"]).path

    assert client.post(path, callback).status_code == 200

    first.refresh_from_db()
    assert first.status == ("bounced" if bounced else "failed")
    after = send(sms, customer, on_commit, "s2", slug="transactional")
    assert (after.status, after.reason) == (("suppressed", "undeliverable") if bounced else ("sent", ""))


def test_a_complaint_opts_the_customer_out_of_marketing_on_that_channel(sms, vendor, on_commit, client):
    customer = CustomerFactory(external_id="c1", phone="+15550000006")
    send(sms, customer, on_commit, "c1")
    path = urlparse(vendor.requests[0].form()["StatusCallback"]).path

    answer = client.post(path, {"status": "complained"}, content_type="application/json")

    assert answer.status_code == 200
    assert Delivery.objects.get(idempotency_key="c1").notes["complaint"]["detail"] == "complained"
    assert (send(sms, customer, on_commit, "c2").reason) == "channel_opt_out"
