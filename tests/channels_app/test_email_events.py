"""Email vendors' bounce and complaint webhooks (/channels/email-events/<channel id>/): Amazon SES
through SNS, SendGrid's Event Webhook, Postmark and Mailgun report bounces and complaints after the
SMTP session; each report reaches the delivery whose Message-ID it names (else the recipient's
latest email) and has a status callback's effect, once however often the vendor retries."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from channels_app.models import Consent, Delivery
from channels_app.services.tracking import delivery_status_record
from journeys.models import AuditEntry, Customer, Event, Identity
from tests.channels_app.factories import ChannelFactory, CustomerFactory
from tests.channels_app.test_bounces import send

pytestmark = pytest.mark.django_db

PASSWORD = "esp-hook-secret"


@pytest.fixture
def email(smtp, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_ESP_EVENTS", PASSWORD)
    return ChannelFactory(name="email", kind="email", provider="smtp",
                          settings={"from_email": "shop@shop.test", "events_password_env": "JOURNEYS_SECRET_TEST_ESP_EVENTS"})


def post(client, channel, body, *, password=PASSWORD, raw=None, content_type="application/json", **headers):
    if password is not None:
        token = base64.b64encode(f"sendgrid:{password}".encode()).decode()
        headers["HTTP_AUTHORIZATION"] = f"Basic {token}"
    data = raw if raw is not None else json.dumps(body)
    return client.post(f"/channels/email-events/{channel.pk}/", data, content_type=content_type, **headers)


def sns(message: dict, **envelope) -> dict:
    """An SNS HTTP(S) notification carrying an SES notification (SNS posts it as text/plain)."""
    return {"Type": "Notification", "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-events", "Message": json.dumps(message),
            "Timestamp": "2026-12-07T12:00:00.000Z", "SignatureVersion": "1", "Signature": "EXAMPLE==",
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe", **envelope}


def ses_mail(delivery) -> dict:
    """SES's `mail` object: its own messageId, our Message-ID among the original headers."""
    return {"timestamp": "2026-12-07T11:59:58.000Z", "source": "shop@shop.test",
            "messageId": "0100018c4a5b6c7d-11111111-2222-3333-4444-555555555555-000000",
            "destination": [delivery.to], "headersTruncated": False,
            "headers": [{"name": "From", "value": "shop@shop.test"}, {"name": "To", "value": delivery.to},
                        {"name": "Message-ID", "value": delivery.provider_message_id}],
            "commonHeaders": {"from": ["shop@shop.test"], "to": [delivery.to],
                              "messageId": delivery.provider_message_id, "subject": delivery.subject}}


def ses_bounce(delivery, bounce_type="Permanent", feedback="0100018c-feedback-1") -> dict:
    return {"notificationType": "Bounce", "mail": ses_mail(delivery),
            "bounce": {"bounceType": bounce_type, "bounceSubType": "General" if bounce_type == "Permanent" else "MailboxFull",
                       "bouncedRecipients": [{"emailAddress": delivery.to, "action": "failed", "status": "5.1.1",
                                              "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
                       "timestamp": "2026-12-07T12:00:00.000Z", "feedbackId": feedback,
                       "reportingMTA": "dsn; a8-1.smtp-out.amazonses.com"}}


@contextmanager
def statements():
    """The SQL statements run inside the block (no cap, unlike CaptureQueriesContext's 9,000)."""
    seen: list[str] = []

    def count(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        yield seen


def email_consent(customer):
    return Consent.objects.filter(customer=customer, channel_kind="email", topic__isnull=True).first()


# --------------------------------------------------------------------------- Amazon SES (SNS)


def test_an_ses_permanent_bounce_bounces_the_delivery_and_suppresses_the_address_once(email, smtp, on_commit, client):
    # given a message that went out through the relay
    customer = CustomerFactory(external_id="ses1", email="gone-ses1@example.com")
    delivery = send(email, customer, on_commit, "ses1-m1")
    assert delivery.status == "sent" and delivery.provider_message_id.startswith("<delivery-")

    # when SES reports a permanent bounce through SNS, and SNS delivers it twice
    answers = [post(client, email, sns(ses_bounce(delivery)), content_type="text/plain; charset=UTF-8")
               for _ in range(2)]

    # then the delivery is bounced, with one Message Bounced, and the address is suppressed
    assert [a.status_code for a in answers] == [200, 200]
    assert (answers[0].json()["applied"], answers[1].json()["already"]) == (1, 1)
    delivery.refresh_from_db()
    assert delivery.status == "bounced" and "550 5.1.1" in delivery.error
    assert Event.objects.filter(customer=customer, name="Message Bounced").count() == 1
    assert email_consent(customer).source.startswith("hard_bounce:")
    later = send(email, customer, on_commit, "ses1-r1", slug="transactional")
    assert (later.status, later.reason) == ("suppressed", "undeliverable")
    assert len(smtp.messages) == 1 and smtp.messages[0]["X-PM-Metadata-journeys_message_id"] is None


def test_an_ses_transient_bounce_is_only_noted(email, on_commit, client):
    customer = CustomerFactory(external_id="ses2", email="full-ses2@example.com")
    delivery = send(email, customer, on_commit, "ses2-m1")

    for _ in range(2):  # a retry of the same notification
        assert post(client, email, sns(ses_bounce(delivery, "Transient"))).status_code == 200

    delivery.refresh_from_db()
    assert delivery.status == "sent"
    assert len(delivery.notes["soft_bounces"]) == 1 and "Transient" in delivery.notes["soft_bounces"][0]["detail"]
    assert email_consent(customer) is None
    assert send(email, customer, on_commit, "ses2-m2").status == "sent"


def test_an_ses_complaint_opts_the_customer_out_of_all_but_transactional_email(email, on_commit, client):
    customer = CustomerFactory(external_id="ses3", email="ses3@example.com")
    delivery = send(email, customer, on_commit, "ses3-m1")
    complaint = {"notificationType": "Complaint", "mail": ses_mail(delivery),
                 "complaint": {"userAgent": "AnyCompany Feedback Loop (V0.01)", "complaintFeedbackType": "abuse",
                               "complainedRecipients": [{"emailAddress": delivery.to}],
                               "timestamp": "2026-12-07T12:01:00.000Z", "feedbackId": "0100018c-complaint-1"}}

    assert post(client, email, sns(complaint)).json()["applied"] == 1

    delivery.refresh_from_db()
    assert delivery.notes["complaint"]["detail"] == "ses complaint: abuse"
    assert (email_consent(customer).status, email_consent(customer).source) == ("opted_out", "complaint")
    assert send(email, customer, on_commit, "ses3-m2").reason == "channel_opt_out"
    assert send(email, customer, on_commit, "ses3-r1", slug="transactional").status == "sent"


def test_an_sns_subscription_confirmation_is_recorded_for_ops_and_nothing_is_fetched(email, client, caplog):
    url = ("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-1:"
           "123456789012:ses-events&Token=2336412f37fb687f5d51e6e2425f004aed")
    body = {"Type": "SubscriptionConfirmation", "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37fb687f5d51e6e2425f004aed", "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-events",
            "Message": "You have chosen to subscribe to the topic ...", "SubscribeURL": url,
            "Timestamp": "2026-12-07T12:00:00.000Z", "SignatureVersion": "1", "Signature": "EXAMPLE=="}

    with caplog.at_level(logging.WARNING, logger="channels_app.services.email_events"):
        answers = [post(client, email, body) for _ in range(2)]

    assert [a.status_code for a in answers] == [200, 200]
    assert "SubscribeURL" in answers[0].json()["subscription"]
    entries = list(AuditEntry.objects.filter(action="sns_subscription"))
    assert len(entries) == 1 and entries[0].data["subscribe_url"] == url
    assert url in caplog.text


def test_a_bounce_names_the_message_it_is_about_not_the_latest_one(email, on_commit, client):
    # given two messages to one address, the older one bounced later (by its Message-ID)
    customer = CustomerFactory(external_id="ses4", email="ses4@example.com")
    older = send(email, customer, on_commit, "ses4-m1")
    newer = send(email, customer, on_commit, "ses4-m2")

    assert post(client, email, sns(ses_bounce(older))).status_code == 200

    older.refresh_from_db()
    newer.refresh_from_db()
    assert (older.status, newer.status) == ("bounced", "sent")


# --------------------------------------------------------------------------- SendGrid


def test_a_sendgrid_batch_applies_each_event_and_skips_a_bad_item(email, on_commit, client):
    customers = [CustomerFactory(external_id=f"sg{i}", email=f"sg{i}@example.com") for i in range(5)]
    d = [send(email, c, on_commit, f"sg{i}-m1") for i, c in enumerate(customers)]
    ts = int(timezone.now().timestamp())
    batch = [
        {"email": d[0].to, "timestamp": ts, "smtp-id": d[0].provider_message_id, "event": "bounce",
         "category": ["cat facts"], "sg_event_id": "sg-ev-1", "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.0",
         "reason": "500 unknown recipient", "status": "5.0.0", "type": "bounce"},
        "not an event",
        {"email": d[1].to, "timestamp": ts, "smtp-id": d[1].provider_message_id, "event": "spamreport",
         "sg_event_id": "sg-ev-2"},
        {"email": d[2].to, "timestamp": ts, "smtp-id": d[2].provider_message_id, "event": "delivered",
         "response": "250 OK", "sg_event_id": "sg-ev-3"},
        {"email": d[3].to, "timestamp": ts, "smtp-id": d[3].provider_message_id, "event": "bounce",
         "reason": "451 try again later", "status": "4.0.0", "type": "blocked", "sg_event_id": "sg-ev-4"},
        {"email": d[4].to, "timestamp": ts, "smtp-id": d[4].provider_message_id, "event": "open",
         "sg_event_id": "sg-ev-5", "useragent": "Mozilla/5.0"},
        {"email": d[4].to, "timestamp": ts, "smtp-id": d[4].provider_message_id, "sg_event_id": "sg-ev-6"},
    ]

    answer = post(client, email, batch)

    assert answer.status_code == 200
    report = answer.json()
    assert (report["applied"], report["ignored"]) == (4, 1)
    assert report["problems"] == [{"index": "1", "error": "an event must be a JSON object"},
                                  {"index": "6", "error": "event: missing"}]
    statuses = {x.idempotency_key: x for x in Delivery.objects.filter(pk__in=[x.pk for x in d])}
    assert statuses["sg0-m1"].status == "bounced"
    assert statuses["sg1-m1"].notes["complaint"] and email_consent(customers[1]).source == "complaint"
    assert statuses["sg2-m1"].status == "delivered"
    assert statuses["sg3-m1"].status == "sent" and statuses["sg3-m1"].notes["soft_bounces"][0]["key"] == "sg-ev-4"
    assert statuses["sg4-m1"].status == "sent"
    # the retry of the whole batch changes nothing more
    again = post(client, email, batch).json()
    assert (again["applied"], again["already"]) == (0, 4)
    assert Event.objects.filter(name__in=["Message Bounced", "Message Delivered"]).count() == 2


def test_sendgrid_dropped_for_a_bounced_address_suppresses_it(email, on_commit, client):
    customer = CustomerFactory(external_id="sgd", email="sgd@example.com")
    delivery = send(email, customer, on_commit, "sgd-m1")
    event = {"email": delivery.to, "timestamp": 1513299569, "smtp-id": delivery.provider_message_id,
             "event": "dropped", "reason": "Bounced Address", "status": "5.0.0", "sg_event_id": "sg-drop-1"}

    assert post(client, email, [event]).json()["applied"] == 1

    delivery.refresh_from_db()
    assert delivery.status == "bounced" and email_consent(customer).source.startswith("hard_bounce:")


def test_a_batch_of_1000_sendgrid_events_is_matched_set_based_and_a_retry_costs_no_write(email, client):
    # given 1,000 email deliveries sent to 1,000 customers
    now = timezone.now()
    customers = Customer.objects.bulk_create([Customer(external_id=f"bulk{i}", email=f"bulk{i}@example.com",
                                                       timezone="UTC", traits={}) for i in range(1000)])
    deliveries = Delivery.objects.bulk_create([
        Delivery(idempotency_key=f"bulk-{i}", customer=c, channel=email, to=c.email, status="sent",
                 sent_at=now - timedelta(minutes=5)) for i, c in enumerate(customers)])
    for delivery in deliveries:
        digest = hashlib.sha256(delivery.idempotency_key.encode()).hexdigest()[:20]  # as the SMTP provider writes it
        delivery.provider_message_id = f"<delivery-{delivery.pk}.{digest}@shop.test>"
    Delivery.objects.bulk_update(deliveries, ["provider_message_id"])
    ts = int(now.timestamp())

    def events(rows):
        return [{"email": x.to, "timestamp": ts, "smtp-id": x.provider_message_id, "event": "delivered",
                 "response": "250 OK", "sg_event_id": f"sg-bulk-{x.pk}"} for x in rows]

    # when SendGrid posts them as one batch of 1,000 'delivered' events
    with statements() as first:
        answer = post(client, email, events(deliveries))

    # then they are applied set-based: statements per chunk of rows (SQLite's bound on parameters
    # splits the bulk INSERTs and UPDATEs), not per event
    assert answer.status_code == 200 and answer.json()["applied"] == 1000
    assert Delivery.objects.filter(channel=email, status="delivered").count() == 1000
    assert Event.objects.filter(name="Message Delivered").count() == 1000
    assert len(first) <= 100, "\n".join(sql[:150] for sql in first)
    # and a retry of the batch is matched with a fixed number of queries and writes nothing
    with statements() as retry:
        assert post(client, email, events(deliveries)).json()["already"] == 1000
    with statements() as small:
        assert post(client, email, events(deliveries[:10])).json()["already"] == 10
    assert len(retry) == len(small) <= 5
    assert not [sql for sql in retry if sql.lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE"))]
    print(f"\nstatements: 1,000 delivered events {len(first)}, their retry {len(retry)}")


def test_unknown_addresses_are_matched_with_a_fixed_number_of_queries(email, client):
    def batch(n):
        return [{"email": f"nobody{i}@example.com", "timestamp": 1513299569, "event": "bounce", "type": "bounce",
                 "smtp-id": f"<14c5d75ce93.dfd.{i}@ismtpd-555>", "sg_event_id": f"x{i}"} for i in range(n)]

    with statements() as one:
        assert post(client, email, batch(1)).json()["unmatched"] == 1
    with statements() as many:
        assert post(client, email, batch(500)).json()["unmatched"] == 500
    assert len(many) == len(one)


# --------------------------------------------------------------------------- Postmark and Mailgun


def postmark_bounce(delivery, bounce_type="HardBounce", *, metadata=None, bounce_id=42):
    return {"RecordType": "Bounce", "ID": bounce_id, "Type": bounce_type, "TypeCode": 1, "Name": "Hard bounce",
            "Tag": "", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "ServerID": 23,
            "MessageStream": "outbound", "Description": "The server was unable to deliver your message",
            "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist",
            "Email": delivery.to, "From": "shop@shop.test", "BouncedAt": "2026-12-07T13:28:10.2735393-04:00",
            "DumpAvailable": True, "Inactive": True, "CanActivate": True, "Subject": delivery.subject,
            "Metadata": metadata or {}}


def test_a_postmark_hard_bounce_without_metadata_falls_back_to_the_recipients_latest_email(email, on_commit,
                                                                                          client):
    # given two messages to an address the profile holds as typed (its identity in lower case, as
    # ingestion stores it), and Postmark reports it in lower case
    customer = CustomerFactory(external_id="pm1", email="Ann.PM1@Example.com")
    Identity.objects.create(kind="email", value="ann.pm1@example.com", customer=customer)
    older = send(email, customer, on_commit, "pm1-m1")
    newer = send(email, customer, on_commit, "pm1-m2")
    bounce = {**postmark_bounce(newer), "Email": "ann.pm1@example.com"}

    assert post(client, email, bounce).json()["applied"] == 1

    older.refresh_from_db()
    newer.refresh_from_db()
    assert (older.status, newer.status) == ("sent", "bounced")
    assert email_consent(customer).source.startswith("hard_bounce:")


def test_postmark_metadata_names_the_message_and_soft_bounces_and_complaints_follow_their_type(
        email, smtp, on_commit, client, monkeypatch):
    # given two messages sent through Postmark's SMTP relay (the test's server stands for it)
    monkeypatch.setattr("channels_app.providers.email.POSTMARK_SMTP_DOMAINS", (".postmarkapp.com", "127.0.0.1"))
    customer = CustomerFactory(external_id="pm2", email="pm2@example.com")
    older = send(email, customer, on_commit, "pm2-m1")
    newer = send(email, customer, on_commit, "pm2-m2")
    # each carries its Message-ID as Postmark metadata, which Postmark's webhooks return
    value = smtp.messages[0]["X-PM-Metadata-journeys_message_id"]
    assert value == older.provider_message_id.strip("<>").split("@")[0]
    tag = {"journeys_message_id": value}

    soft = post(client, email, postmark_bounce(older, "SoftBounce", metadata=tag, bounce_id=7)).json()
    spam = post(client, email, {"RecordType": "SpamComplaint", "ID": 8, "Type": "SpamComplaint", "TypeCode": 512,
                                "MessageID": "883953f4-0000", "Email": older.to, "Metadata": tag,
                                "BouncedAt": "2026-12-07T13:30:00Z", "Details": "Test spam complaint"}).json()

    assert (soft["applied"], spam["applied"]) == (1, 1)
    older.refresh_from_db()
    newer.refresh_from_db()
    assert older.status == "sent" and older.notes["soft_bounces"][0]["key"] == "7" and older.notes["complaint"]
    assert "complaint" not in newer.notes
    assert email_consent(customer).source == "complaint"


@pytest.mark.parametrize("severity, bounced", [("permanent", True), ("temporary", False)])
def test_a_mailgun_failure_bounces_when_permanent_and_is_noted_when_temporary(email, on_commit, client, severity,
                                                                              bounced):
    customer = CustomerFactory(external_id=f"mg-{severity}", email=f"mg-{severity}@example.com")
    delivery = send(email, customer, on_commit, f"mg-{severity}-m1")
    body = {"signature": {"timestamp": "1529006854", "token": "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
                          "signature": "d2271d12299f6592d9d44cd9d250f0704e4674c30d79d07c47a66f95ce71cf55"},
            "event-data": {"id": "G9Bn5sl1TC6nu79C8C0bwg", "timestamp": 1521233195.375624, "log-level": "error",
                           "event": "failed", "severity": severity, "reason": "bounce",
                           "delivery-status": {"attempt-no": 1, "code": 550, "message": "5.1.1 No such user",
                                               "description": "", "session-seconds": 0.1},
                           "message": {"headers": {"to": delivery.to, "from": "shop@shop.test",
                                                   "message-id": delivery.provider_message_id.strip("<>"),
                                                   "subject": delivery.subject}, "size": 111},
                           "recipient": delivery.to, "recipient-domain": "example.com"}}

    assert post(client, email, body).json()["applied"] == 1

    delivery.refresh_from_db()
    assert delivery.status == ("bounced" if bounced else "sent")
    assert (email_consent(customer) is not None) is bounced


def test_a_mailgun_complaint_opts_out(email, on_commit, client):
    customer = CustomerFactory(external_id="mgc", email="mgc@example.com")
    delivery = send(email, customer, on_commit, "mgc-m1")
    body = {"signature": {"timestamp": "1529006854", "token": "t", "signature": "s"},
            "event-data": {"id": "-Agny091SquKnsrW2NEKUA", "timestamp": 1521233123.501324, "event": "complained",
                           "recipient": delivery.to,
                           "message": {"headers": {"message-id": delivery.provider_message_id.strip("<>")}}}}

    assert post(client, email, body).json()["applied"] == 1
    assert email_consent(customer).source == "complaint"


def test_a_made_up_message_id_names_no_message(email, on_commit, client):
    customer = CustomerFactory(external_id="fake1", email="fake1@example.com")
    delivery = send(email, customer, on_commit, "fake1-m1")
    forged = f"<delivery-{delivery.pk}.{'0' * 20}@shop.test>"
    event = {"email": "someone-else@example.com", "timestamp": 1513299569, "smtp-id": forged, "event": "bounce",
             "type": "bounce", "sg_event_id": "f1"}

    assert post(client, email, [event]).json()["unmatched"] == 1
    delivery.refresh_from_db()
    assert delivery.status == "sent"


@pytest.fixture
def other_email(smtp, monkeypatch):
    """A second email channel (another brand, another vendor account) with its own events password."""
    monkeypatch.setenv("JOURNEYS_SECRET_OTHER_ESP", "other-secret")
    return ChannelFactory(name="email-b", kind="email", provider="smtp",
                          settings={"from_email": "b@brand-b.test", "events_password_env": "JOURNEYS_SECRET_OTHER_ESP"})


def test_a_vendor_webhook_of_one_channel_cannot_bounce_another_channels_message(email, other_email, on_commit,
                                                                               client):
    # given a message sent through channel B
    customer = CustomerFactory(external_id="x1", email="x1@example.com")
    on_b = send(other_email, customer, on_commit, "x1-b")
    assert on_b.status == "sent"

    # when channel A's endpoint (A's password) reports a permanent bounce naming B's message
    answer = post(client, email, sns(ses_bounce(on_b)), password=PASSWORD)

    # then nothing of channel B changes: the report is unmatched, the address is not suppressed
    on_b.refresh_from_db()
    assert (answer.json()["applied"], answer.json()["unmatched"], on_b.status) == (0, 1, "sent")
    assert not Consent.objects.filter(customer=customer).exists()


def test_a_report_without_message_id_reaches_the_latest_message_of_its_own_channel(email, other_email, on_commit,
                                                                                  client):
    # given a message through channel A, then a later one to the same address through channel B
    customer = CustomerFactory(external_id="x2", email="x2@example.com")
    on_a = send(email, customer, on_commit, "x2-a")
    on_b = send(other_email, customer, on_commit, "x2-b")

    # when A's vendor reports a bounce by address only (Postmark without metadata)
    assert post(client, email, {**postmark_bounce(on_a), "Email": "x2@example.com"}).json()["applied"] == 1

    # then A's own message bounced, not B's later one
    on_a.refresh_from_db()
    on_b.refresh_from_db()
    assert (on_a.status, on_b.status) == ("bounced", "sent")


def test_a_report_without_message_id_reads_only_the_recent_messages_of_the_address(email, on_commit, client):
    # given a long-time subscriber: many messages long ago, none lately
    customer = CustomerFactory(external_id="old1", email="old1@example.com")
    old = [send(email, customer, on_commit, f"old1-m{i}") for i in range(3)]
    Delivery.objects.filter(pk__in=[d.pk for d in old]).update(sent_at=timezone.now() - timedelta(days=400))

    # when a vendor reports a bounce by address only
    with statements() as seen:
        answer = post(client, email, {**postmark_bounce(old[-1]), "Email": "old1@example.com"}).json()

    # then no old message is taken for it, and the look-up is bounded by time (an index range)
    assert (answer["applied"], answer["unmatched"]) == (0, 1)
    assert not Delivery.objects.filter(customer=customer).exclude(status="sent").exists()
    looked_up = [sql for sql in seen if 'FROM "channels_app_delivery"' in sql and '"sent_at" >=' in sql]
    assert looked_up, seen


def test_a_delivered_receipt_in_a_batch_clears_the_failure_as_the_status_callback_does(email, on_commit, client):
    # given two messages reported failed, with a failure reason
    a = send(email, CustomerFactory(external_id="y1", email="y1@example.com"), on_commit, "y1")
    b = send(email, CustomerFactory(external_id="y2", email="y2@example.com"), on_commit, "y2")
    for d in (a, b):
        delivery_status_record(delivery_id=d.pk, status="failed", detail="550 rejected")
        d.refresh_from_db()
        assert (d.status, d.reason) == ("failed", "permanent_error")

    # when one is reported delivered by a status callback and the other by SendGrid's webhook
    delivery_status_record(delivery_id=a.pk, status="delivered")
    ts = int(timezone.now().timestamp())
    post(client, email, [{"email": b.to, "timestamp": ts, "smtp-id": b.provider_message_id,
                          "event": "delivered", "sg_event_id": "sg-y2"}])

    # then both end the same way: delivered, no failure reason, no due time
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.status, a.reason, a.next_attempt_at) == ("delivered", "", None)
    assert (b.status, b.reason, b.next_attempt_at) == (a.status, a.reason, a.next_attempt_at)


# --------------------------------------------------------------------------- the endpoint's answers


def test_authentication_and_configuration_answers(email, client, monkeypatch):
    no_hook = ChannelFactory(name="plain-email", kind="email", provider="smtp", settings={})
    sms = ChannelFactory(name="sms-x", kind="sms", provider="console",
                         settings={"events_password_env": "JOURNEYS_SECRET_TEST_ESP_EVENTS"})
    body = [{"event": "delivered", "email": "a@example.com"}]

    missing = post(client, email, body, password=None)
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Basic")
    assert b"Basic authentication is required" in missing.content
    wrong = post(client, email, body, password="guess")
    assert wrong.status_code == 403 and b"wrong password" in wrong.content
    assert post(client, no_hook, body).status_code == 404
    assert post(client, sms, body).status_code == 404
    assert client.get(f"/channels/email-events/{email.pk}/").status_code == 405
    monkeypatch.delenv("JOURNEYS_SECRET_TEST_ESP_EVENTS")
    unset = post(client, email, body)
    assert unset.status_code == 403 and b"not configured" in unset.content


@pytest.mark.parametrize("raw, problem", [
    (b'[{"event": "bounce",', b"body: is not valid JSON"),
    (b'{"hello": "world"}', b"body: is not a report of Amazon SES (through SNS), SendGrid, Postmark or Mailgun"),
    (b'"bounce"', b"body: must be a JSON object"),
    (b"", b"body: is not valid JSON"),
])
def test_malformed_bodies_are_400_naming_the_problem(email, client, raw, problem):
    answer = post(client, email, None, raw=raw)

    assert (answer.status_code, problem in answer.content) == (400, True), answer.content


def test_an_sns_message_that_is_not_json_is_reported(email, client):
    body = sns({})
    body["Message"] = "{not json"

    answer = post(client, email, body)

    assert answer.status_code == 200
    assert answer.json()["problems"][0]["index"] == "Message"
    assert "is not valid JSON" in answer.json()["problems"][0]["error"]


def test_an_oversize_body_is_413(email, client):
    batch = [{"event": "open", "email": f"{i}@example.com", "x": "y" * 1000} for i in range(2100)]

    answer = post(client, email, batch)

    assert answer.status_code == 413
