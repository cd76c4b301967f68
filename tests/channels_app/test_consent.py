"""Consent at send time, one-click unsubscribe, the preference centre, SMS STOP/START."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from channels_app.models import Consent, Delivery, InboundMessage, MessageTemplate
from channels_app.services import consent_set, message_send
from channels_app.services.links import link_url
from channels_app.views import twilio_signature
from journeys.choices import ApiScope
from journeys.models import Customer, Identity
from journeys.tasks import events_housekeeping
from tests.apiclient import Api, make_token
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory, topic

pytestmark = pytest.mark.django_db


@pytest.fixture
def email():
    return ChannelFactory(name="email", kind="email", provider="console")


@pytest.fixture
def ada():
    return CustomerFactory(external_id="ada", email="ada@example.com", phone="+15550001",
                           traits={"first_name": "Ada", "ltv": 900, "propensity_buy": 0.8})


def send(channel, customer, template, key, on_commit):
    with on_commit():
        delivery = message_send(customer=customer, template=template, channel=channel, idempotency_key=key, context={})
    delivery.refresh_from_db()
    return delivery


def test_marketing_requires_opt_in_and_the_suppression_is_recorded(email, ada, on_commit):
    marketing = TemplateFactory(topic=topic("marketing"))

    first = send(email, ada, marketing, "m1", on_commit)
    consent_set(customer=ada, channel_kind="email", topic=topic("marketing"), status="opted_in", source="signup form")
    second = send(email, ada, marketing, "m2", on_commit)

    assert (first.status, first.reason) == ("suppressed", "no_opt_in")
    assert second.status == "sent"


def test_topic_opt_out_stops_that_topic_but_not_transactional(email, ada, on_commit):
    consent_set(customer=ada, channel_kind="email", topic=topic("product_updates"), status="opted_out", source="t")

    news = send(email, ada, TemplateFactory(topic=topic("product_updates")), "n1", on_commit)
    receipt = send(email, ada, TemplateFactory(topic=topic("transactional")), "r1", on_commit)

    assert (news.status, news.reason) == ("suppressed", "topic_opt_out")
    assert receipt.status == "sent"


def test_global_do_not_contact_stops_even_transactional(email, ada, on_commit):
    consent_set(customer=ada, channel_kind="", topic=None, status="opted_out", source="support ticket")

    receipt = send(email, ada, TemplateFactory(topic=topic("transactional")), "r1", on_commit)

    assert (receipt.status, receipt.reason) == ("suppressed", "do_not_contact")


def test_opt_out_after_queueing_is_checked_again_at_send_time(email, ada, django_capture_on_commit_callbacks):
    from channels_app.services import delivery_dispatch

    with django_capture_on_commit_callbacks(execute=False):
        delivery = message_send(customer=ada, template=TemplateFactory(topic=topic("product_updates")), channel=email,
                                idempotency_key="late", context={})
    consent_set(customer=ada, channel_kind="email", topic=None, status="opted_out", source="t")
    delivery = delivery_dispatch(delivery_id=delivery.pk)
    assert (delivery.status, delivery.reason) == ("suppressed", "channel_opt_out")


def test_refused_channel_falls_back_to_one_the_customer_allows(ada, on_commit):
    sms = ChannelFactory(name="sms", kind="sms", provider="console")
    email = ChannelFactory(name="email", kind="email", provider="console", fallback=sms)
    consent_set(customer=ada, channel_kind="email", topic=topic("product_updates"), status="opted_out", source="t")
    delivery = send(email, ada, TemplateFactory(topic=topic("product_updates")), "f1", on_commit)
    assert (delivery.channel.kind, delivery.to, delivery.status) == ("sms", "+15550001", "sent")


def test_one_click_unsubscribe_post_opts_out_of_the_topic(email, ada, client, on_commit):
    news = TemplateFactory(topic=topic("product_updates"))
    delivery = send(email, ada, news, "n1", on_commit)
    url = link_url(purpose="unsubscribe", data={"c": ada.pk, "k": "email", "t": "product_updates", "d": delivery.pk})
    path = url.split("8000", 1)[1]

    page = client.get(path)  # a link scanner's GET changes nothing
    assert page.status_code == 200 and b"Unsubscribe" in page.content and not Consent.objects.exists()

    response = client.post(path, {"List-Unsubscribe": "One-Click"})

    assert response.status_code == 200
    consent = Consent.objects.get(customer=ada)
    assert (consent.channel_kind, consent.topic.slug, consent.status, consent.source) == (
        "email", "product_updates", "opted_out", "one_click_unsubscribe")
    assert send(email, ada, news, "n2", on_commit).reason == "topic_opt_out"


def test_preference_centre_shows_and_changes_choices_with_history(email, ada, client, on_commit):
    ChannelFactory(name="sms", kind="sms", provider="console")
    path = link_url(purpose="preferences", data={"c": ada.pk}).split("8000", 1)[1]

    page = client.get(path)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="t:product_updates:email" aria-label="Product updates by email" checked' in html
    assert 'name="t:marketing:email" aria-label="Marketing by email" >' in html  # opt-in topic: off until chosen

    response = client.post(path, {"t:marketing:email": "on", "t:product_updates:sms": "on", "personalization": "on"})

    assert response.status_code == 200 and b"Your choices are saved" in response.content
    status = {(c.channel_kind, c.topic.slug if c.topic else None): c.status for c in Consent.objects.filter(customer=ada)}
    assert status[("email", "marketing")] == "opted_in"
    assert status[("email", "product_updates")] == "opted_out"
    assert status[("sms", "product_updates")] == "opted_in"
    assert send(email, ada, TemplateFactory(topic=topic("marketing")), "m1", on_commit).status == "sent"
    assert send(email, ada, TemplateFactory(topic=topic("product_updates")), "p1", on_commit).status == "suppressed"
    history = Consent.history.filter(customer_id=ada.pk, channel_kind="email", topic__slug="marketing")
    assert history.count() == 1 and history.get().history_change_reason == "preference_centre"

    # a tampered link shows nothing and changes nothing
    bad = client.post(path[:-3] + "xx/", {"do_not_contact": "on"})
    assert bad.status_code == 400
    assert not Consent.objects.filter(customer=ada, channel_kind="", topic=None, status="opted_out").exists()


def test_personalization_opt_out_leaves_only_the_minimal_profile(email, ada, on_commit):
    template = TemplateFactory(body="{{ profile.first_name }} ltv={{ profile.ltv }} p={{ scores.propensity_buy }}")
    consent_set(customer=ada, channel_kind="", topic=topic("personalization"), status="opted_out", source="t")
    delivery = send(email, ada, template, "x", on_commit)
    assert delivery.body == "Ada ltv= p="


@pytest.fixture
def sms_channel(monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "tw-secret")
    return ChannelFactory(name="sms", kind="sms", provider="console", settings={"auth_token_env": "JOURNEYS_SECRET_TEST_TWILIO_TOKEN"})


def inbound(client, channel, body, sign_with="tw-secret", sender="+15550001", **extra):
    """A Twilio-signed inbound SMS on the channel's own endpoint (`extra`: more form fields, e.g. MessageSid)."""
    url = link_url(purpose="inbound", data={"ch": channel.pk})
    path = url.split("8000", 1)[1]
    params = {"Body": body, "To": "+15559999", **({} if sender is None else {"From": sender}), **extra}
    signature = twilio_signature(auth_token=sign_with, url="http://testserver" + path, params=params)
    return client.post(path, params, HTTP_X_TWILIO_SIGNATURE=signature)


def test_sms_stop_and_start_keywords(sms_channel, ada, client, on_commit):
    template = TemplateFactory(topic=topic("product_updates"))

    stop = inbound(client, sms_channel, "  stop ")
    assert stop.status_code == 200 and b"unsubscribed" in stop.content
    assert send(sms_channel, ada, template, "s1", on_commit).reason == "channel_opt_out"

    # a receipt too: after STOP the carriers refuse every SMS from the number
    assert send(sms_channel, ada, TemplateFactory(topic=topic("transactional")), "s1-tx",
                on_commit).reason == "channel_opt_out"

    start = inbound(client, sms_channel, "START")
    assert start.status_code == 200
    assert send(sms_channel, ada, template, "s2", on_commit).status == "sent"
    reasons = list(Consent.history.filter(customer_id=ada.pk, channel_kind="sms").order_by("history_date")
                   .values_list("history_change_reason", flat=True))
    assert reasons == ["sms_keyword:STOP", "sms_keyword:START"]


@pytest.mark.parametrize("sender", [None, "", "  ", "(-)"], ids=["absent", "empty", "blank", "no-digits"])
@pytest.mark.parametrize("word", ["STOP", "START"])
def test_an_inbound_sms_without_a_sender_is_refused_naming_from_and_changes_no_consent(
        sms_channel, ada, client, sender, word):
    # given customers without a phone number, and one with
    phoneless = [CustomerFactory(external_id=f"nophone-{i}", phone="") for i in range(3)]

    # when a correctly signed inbound SMS with no sender says STOP (or START)
    response = inbound(client, sms_channel, word, sender=sender)

    # then it is refused naming From, and nobody's consent changes (least of all every phone-less customer's)
    assert response.status_code == 400 and b"From" in response.content
    assert not Consent.objects.exists()
    assert len(phoneless) == Customer.objects.filter(phone="").count() == 3


def test_a_stop_reaches_a_customer_whose_number_the_api_got_with_spaces(sms_channel, client, on_commit):
    # given an SMS receipt sent through the messages API to a number written with spaces and dashes
    _, key = make_token(ApiScope.SEND, name="shop")
    api = Api(key)
    MessageTemplate.objects.create(name="otp", channel_kind="sms", topic=topic("transactional"), body="Code 1")
    with on_commit():
        first = api.post("messages", {"idempotency_key": "k1", "template": "otp", "to": "+1 555-777 0001"})
    assert first.status_code == 202, first.body
    customer = Customer.objects.get(pk=first.body["delivery"]["customer_id"])
    assert customer.phone == "+15557770001"

    # when the carrier reports STOP from the number as it writes it
    assert inbound(client, sms_channel, "STOP", sender="+15557770001").status_code == 200

    # then that customer is opted out of SMS, and the next message to the number, written either
    # way, finds the same profile and is not sent
    assert Consent.objects.get(customer=customer, channel_kind="sms").status == "opted_out"
    for n, to in enumerate(["+15557770001", "+1 (555) 777.0001"]):
        with on_commit():
            again = api.post("messages", {"idempotency_key": f"k{n + 2}", "template": "otp", "to": to})
        assert again.body["delivery"]["customer_id"] == customer.pk
        assert (again.body["delivery"]["status"], again.body["delivery"]["reason"]) == ("suppressed",
                                                                                     "channel_opt_out")
    assert Customer.objects.count() == 1
    assert list(Identity.objects.values_list("kind", "value")) == [("phone", "+15557770001")]


def test_a_number_two_customers_hold_in_their_own_spellings_reaches_each_of_them(sms_channel, client, on_commit):
    # given two profiles for one number, made before numbers were normalised: the migration
    # normalised their profile numbers and left their identities as typed (listed to merge)
    dan = CustomerFactory(external_id="dan", phone="+15550000007")
    eve = CustomerFactory(external_id="eve", phone="+15550000007")
    Identity.objects.create(kind="phone", value="+1 (555) 000-0007", customer=dan)
    Identity.objects.create(kind="phone", value="+1 (555)000 0007", customer=eve)
    api = Api(make_token(ApiScope.SEND, name="shop")[1])
    MessageTemplate.objects.create(name="otp", channel_kind="sms", topic=topic("transactional"), body="Code 1")

    # when the messages API sends to the number as each of them has it (with its country code: SMS goes in E.164)
    sent = {}
    for n, to in enumerate(["+1 (555) 000-0007", "+1 (555)000 0007"]):
        with on_commit():
            response = api.post("messages", {"idempotency_key": f"k{n}", "template": "otp", "to": to})
        assert response.status_code == 202, response.body
        sent[to] = response.body["delivery"]["customer_id"]

    # then each message went to the profile holding that spelling, not to a new empty profile
    assert sent == {"+1 (555) 000-0007": dan.pk, "+1 (555)000 0007": eve.pk}
    assert Customer.objects.count() == 2 and not Identity.objects.filter(value="+15550000007").exists()
    # and a STOP from the number opts both out
    assert inbound(client, sms_channel, "STOP", sender="+15550000007").status_code == 200
    assert set(Consent.objects.filter(channel_kind="sms", status="opted_out").values_list("customer", flat=True)) \
        == {dan.pk, eve.pk}


def test_inbound_sms_with_a_bad_signature_changes_nothing(sms_channel, ada, client):
    assert inbound(client, sms_channel, "STOP", sign_with="wrong").status_code == 400
    path = link_url(purpose="inbound", data={"ch": sms_channel.pk}).split("8000", 1)[1]
    assert client.post(path[:-4] + "zzz/", {"From": "+15550001", "Body": "STOP"}).status_code == 400
    assert not Consent.objects.exists()
    assert Delivery.objects.count() == 0


def test_an_expired_preference_link_is_refused(ada, client, monkeypatch):
    from channels_app.services import links

    path = link_url(purpose="preferences", data={"c": ada.pk}).split("8000", 1)[1]
    monkeypatch.setitem(links.MAX_AGE_S, "preferences", -1)
    response = client.post(path, {"do_not_contact": "on"})
    assert response.status_code == 400 and b"expired" in response.content
    assert not Consent.objects.exists()


@pytest.mark.parametrize("body", ["Stop.", "STOP!", " stop ", "stop please", "'Stop'", "Unsubscribe!!", "¡STOP!"])
def test_a_stop_with_punctuation_opts_the_sender_out(sms_channel, ada, client, on_commit, body):
    # given a customer with a phone number
    # when they answer a keyword with punctuation around it
    answer = inbound(client, sms_channel, body)

    # then they are opted out, answered so, and the next SMS (a receipt too) is not sent
    assert answer.status_code == 200 and b"unsubscribed" in answer.content
    assert send(sms_channel, ada, TemplateFactory(topic=topic("transactional")), "after-stop",
                on_commit).reason == "channel_opt_out"


@pytest.mark.parametrize("body", ["Start!", "start.", "YES!"])
def test_a_start_with_punctuation_opts_the_sender_in_again(sms_channel, ada, client, on_commit, body):
    inbound(client, sms_channel, "STOP")

    inbound(client, sms_channel, body)

    assert send(sms_channel, ada, TemplateFactory(topic=topic("product_updates")), "after-start",
                on_commit).status == "sent"


def test_help_is_answered_with_how_to_stop_and_changes_no_consent(sms_channel, ada, client):
    answer = inbound(client, sms_channel, "Help?")

    assert answer.status_code == 200 and b"Reply STOP to unsubscribe" in answer.content
    assert not Consent.objects.filter(customer=ada).exists()


def test_a_stop_reaches_a_customer_whose_number_was_written_with_the_00_international_prefix(
        sms_channel, api, client, on_commit):
    # given a customer who typed their number with 00 instead of +, identified through the event API
    with on_commit():
        assert api.post("identify", {"userId": "u-00", "traits": {"phone": "0044 20 7946 0022"}}).status_code == 200
    customer = Customer.objects.get(external_id="u-00")

    # when the carrier reports STOP from the number in E.164, as carriers write it
    assert inbound(client, sms_channel, "STOP", sender="+442079460022").status_code == 200

    # then that customer is opted out, and a receipt to the number in E.164 finds the same profile
    assert Consent.objects.get(customer=customer, channel_kind="sms").status == "opted_out"
    _, key = make_token(ApiScope.SEND, name="shop")
    MessageTemplate.objects.create(name="otp", channel_kind="sms", topic=topic("transactional"), body="Code 1")
    with on_commit():
        sent = Api(key).post("messages", {"idempotency_key": "k00", "template": "otp", "to": "+442079460022"})
    assert sent.body["delivery"]["customer_id"] == customer.pk
    assert (sent.body["delivery"]["status"], sent.body["delivery"]["reason"]) == ("suppressed", "channel_opt_out")
    assert Customer.objects.count() == 1


def test_an_sms_stop_holds_for_the_number_after_erasure_until_it_texts_start(sms_channel, client, on_commit):
    from channels_app.models import Suppression
    from channels_app.services.consent import address_digest
    from channels_app.services.privacy import customer_erase

    # given a customer who texted STOP, then was erased
    gone = CustomerFactory(external_id="ada", phone="+15550001")
    assert inbound(client, sms_channel, "STOP").status_code == 200
    customer_erase(customer=gone, actor="dpo", reason="GDPR")

    # when the number comes back under a new profile
    back = CustomerFactory(external_id="ada-again", phone="+15550001")
    template = TemplateFactory(topic=topic("transactional"))

    # then no SMS goes to it, receipts included (the carriers refuse them after STOP)
    assert send(sms_channel, back, template, "s1", on_commit).reason == "channel_opt_out"

    # until the person texts START again
    assert inbound(client, sms_channel, "START").status_code == 200
    assert not Suppression.objects.filter(digest=address_digest("sms", "+15550001")).exists()
    assert send(sms_channel, back, template, "s2", on_commit).status == "sent"


def test_a_stop_webhook_twilio_retries_gets_the_same_confirmation_and_changes_nothing(sms_channel, ada, client,
                                                                                 on_commit):
    # given a customer who texted STOP, then START
    template = TemplateFactory(topic=topic("product_updates"))
    assert b"unsubscribed" in inbound(client, sms_channel, "STOP", MessageSid="SMa").content
    assert b"subscribed again" in inbound(client, sms_channel, "START", MessageSid="SMb").content

    # when Twilio posts the STOP's webhook again (same MessageSid: a timeout, its #rc retry)
    again = inbound(client, sms_channel, "STOP", MessageSid="SMa")

    # then it is answered with the same confirmation (the first answer may never have reached Twilio),
    # applied nowhere: the customer stays subscribed
    assert again.status_code == 200 and b"unsubscribed" in again.content
    assert Consent.objects.get(customer=ada, channel_kind="sms").status == "opted_in"
    assert Consent.history.filter(customer_id=ada.pk, channel_kind="sms").count() == 2
    assert send(sms_channel, ada, template, "after-retry", on_commit).status == "sent"
    # while the same text under a new MessageSid is a new STOP
    assert b"unsubscribed" in inbound(client, sms_channel, "STOP", MessageSid="SMc").content
    assert Consent.objects.get(customer=ada, channel_kind="sms").status == "opted_out"


@pytest.mark.parametrize("field", ["From", "Body", "MessageSid"])
def test_an_inbound_sms_with_a_nul_character_is_refused_naming_the_field(sms_channel, ada, client, field):
    # given a correctly signed inbound STOP whose field holds a NUL (%00), which no text column stores
    fields = {"From": "+15550001", "Body": "STOP", "MessageSid": "SMnul"}
    fields[field] += "\x00"

    # when it is posted
    response = inbound(client, sms_channel, fields["Body"], sender=fields["From"], MessageSid=fields["MessageSid"])

    # then it is refused naming the field, and nothing is recorded
    assert response.status_code == 400 and response.content.decode().startswith(f"{field}:")
    assert "NUL" in response.content.decode()
    assert not Consent.objects.exists()


def test_the_keys_of_old_inbound_messages_go_with_the_history_retention(sms_channel, ada, client, settings):
    # given two texts handled under a 30-day retention, one of them 40 days ago
    settings.HISTORY_RETENTION_DAYS = 30
    inbound(client, sms_channel, "HELP", MessageSid="SMold")
    inbound(client, sms_channel, "HELP", MessageSid="SMnew")
    InboundMessage.objects.filter(message_id="SMold").update(received_at=timezone.now() - timedelta(days=40))

    # when the housekeeping runs, then the old one's key goes and the recent one's stays
    assert events_housekeeping()["history"]["inbound_messages"] == 1
    assert list(InboundMessage.objects.values_list("message_id", flat=True)) == ["SMnew"]
