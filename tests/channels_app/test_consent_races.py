"""Provider callbacks and inbound SMS racing for one customer's consent, with real commits and
threads (PostgreSQL): every request is answered 200 and recorded, whichever commits first."""

from __future__ import annotations

import json

from django.test import Client

from channels_app.models import Consent, Delivery, Suppression
from channels_app.services import consent_set
from channels_app.services.consent import address_digest
from channels_app.services.links import link_url
from channels_app.services.privacy import customer_erase
from channels_app.views import twilio_signature
from tests.channels_app.factories import ChannelFactory, CustomerFactory
from tests.marks import on_postgres
from tests.proc import run_in_threads

pytestmark = on_postgres("several connections writing one consent row at once")

PAIRS = 12  # customers, each with two requests posted at the same moment


def _path(url: str) -> str:
    return url.split("8000", 1)[1]


def _sent(channel, customers) -> list[Delivery]:
    """Two messages sent to each customer (the vendor accepted them: SM... ids)."""
    return [Delivery.objects.create(idempotency_key=f"race-{c.pk}-{n}", customer=c, channel=channel,
                                    to=c.phone if channel.kind == "sms" else c.email, body="hi", status="sent",
                                    provider_message_id=f"SM{c.pk:08d}{n}")
            for c in customers for n in range(2)]


def _post_all(requests) -> list:
    """Each (path, data, kwargs) posted from its own thread and connection, all at once."""
    return [result for result, _, _ in run_in_threads(
        *[lambda r=r: Client().post(r[0], r[1], **r[2]) for r in requests])]


def test_two_undelivered_callbacks_of_one_customer_at_once_both_bounce_and_suppress_the_number():
    # given customers with no consent row yet, each sent two SMS
    sms = ChannelFactory(name="sms", kind="sms", provider="console")
    customers = [CustomerFactory(external_id=f"b{i}", phone=f"+1555030{i:04d}") for i in range(PAIRS)]
    deliveries = _sent(sms, customers)

    # when Twilio posts both messages' `undelivered` (30005: unknown number) callbacks at the same moment
    answers = _post_all([(_path(link_url(purpose="status", data={"d": d.pk})),
                          {"MessageSid": d.provider_message_id, "MessageStatus": "undelivered", "ErrorCode": "30005"},
                          {}) for d in deliveries])

    # then every callback is answered 200 and recorded: each message bounced, each number suppressed once
    assert [a.status_code for a in answers] == [200] * len(deliveries)
    assert set(Delivery.objects.values_list("status", flat=True)) == {"bounced"}
    rows = Consent.objects.filter(channel_kind="sms", topic__isnull=True)
    assert sorted(rows.values_list("customer_id", flat=True)) == sorted(c.pk for c in customers)
    assert all(r.status == "opted_out" and r.source.startswith("hard_bounce:") for r in rows)


def test_two_complaints_about_one_customers_emails_at_once_are_both_noted():
    # given customers with no consent row yet, each sent two emails
    email = ChannelFactory(name="email", kind="email", provider="console")
    customers = [CustomerFactory(external_id=f"c{i}", email=f"c{i}@example.com") for i in range(PAIRS)]
    deliveries = _sent(email, customers)

    # when the vendor posts a complaint about each of them at the same moment
    answers = _post_all([(_path(link_url(purpose="status", data={"d": d.pk})), json.dumps({"status": "complaint"}),
                          {"content_type": "application/json"}) for d in deliveries])

    # then each is answered 200, each message has its complaint noted, each customer is opted out once
    assert [a.status_code for a in answers] == [200] * len(deliveries)
    assert all("complaint" in d.notes for d in Delivery.objects.all())
    assert sorted(Consent.objects.filter(channel_kind="email", status="opted_out", source="complaint")
                  .values_list("customer_id", flat=True)) == sorted(c.pk for c in customers)


def _inbound(channel, sender: str, body: str, sid: str) -> tuple:
    """A Twilio-signed inbound SMS as (path, form, headers)."""
    path = _path(link_url(purpose="inbound", data={"ch": channel.pk}))
    params = {"Body": body, "To": "+15559999", "From": sender, "MessageSid": sid}
    return path, params, {"HTTP_X_TWILIO_SIGNATURE": twilio_signature(auth_token="tw-secret",
                                                                       url="http://testserver" + path, params=params)}


def test_two_stops_from_one_number_at_once_are_both_answered_and_opt_the_customer_out(monkeypatch):
    # given customers with no consent row yet
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "tw-secret")
    sms = ChannelFactory(name="sms", kind="sms", provider="console",
                         settings={"auth_token_env": "JOURNEYS_SECRET_TEST_TWILIO_TOKEN"})
    customers = [CustomerFactory(external_id=f"s{i}", phone=f"+1555040{i:04d}") for i in range(PAIRS)]

    # when each texts "STOP" and "Stop please", both arriving at the same moment
    answers = _post_all([_inbound(sms, c.phone, body, f"SM{c.pk}{n}")
                         for c in customers for n, body in enumerate(["STOP", "Stop please"])])

    # then both are confirmed, and each customer is opted out of SMS
    assert [a.status_code for a in answers] == [200] * 2 * PAIRS
    assert all(b"unsubscribed" in a.content for a in answers)
    assert sorted(Consent.objects.filter(channel_kind="sms", status="opted_out")
                  .values_list("customer_id", flat=True)) == sorted(c.pk for c in customers)


def test_one_stop_webhook_posted_several_times_at_once_counts_once(monkeypatch):
    # given a customer
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "tw-secret")
    sms = ChannelFactory(name="sms", kind="sms", provider="console",
                         settings={"auth_token_env": "JOURNEYS_SECRET_TEST_TWILIO_TOKEN"})
    customer = CustomerFactory(external_id="once", phone="+15550509999")

    # when Twilio's webhook for one STOP (one MessageSid) arrives five times at once
    answers = _post_all([_inbound(sms, customer.phone, "STOP", "SMonce")] * 5)

    # then all are answered 200 with the confirmation (Twilio keeps the answer to the copy it
    # counts, which may be any of them), and the opt-out is recorded once
    assert [a.status_code for a in answers] == [200] * 5
    assert all(b"unsubscribed" in a.content for a in answers)
    assert Consent.history.filter(customer_id=customer.pk, channel_kind="sms").count() == 1


def test_two_profiles_of_one_address_erased_at_once_both_keep_its_opt_out():
    # given pairs of profiles sharing an email address, each opted out of email
    pairs = [[CustomerFactory(external_id=f"e{i}-{n}", email=f"shared{i}@example.com") for n in range(2)]
             for i in range(PAIRS // 2)]
    for customer in (c for pair in pairs for c in pair):
        consent_set(customer=customer, channel_kind="email", topic=None, status="opted_out", source="unsubscribe_link")

    # when both profiles of each address are erased at the same moment
    run_in_threads(*[lambda c=c: customer_erase(customer=c, actor="ops", reason="asked")
                     for pair in pairs for c in pair])

    # then every erasure went through, and each address keeps one opt-out
    assert not Consent.objects.exists()
    assert sorted(Suppression.objects.filter(channel_kind="email", topic__isnull=True, status="opted_out")
                  .values_list("digest", flat=True)) == sorted(address_digest("email", f"shared{i}@example.com")
                                                               for i in range(PAIRS // 2))
