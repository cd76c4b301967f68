"""An erased person's objections still hold when they come back (a stale app or a CRM import
brings their address again under a new profile): the erasure keeps a suppression (a keyed
digest of each address, the channel kind x topic objected to), sending honours it, and only an
explicit new opt-in lifts it."""

from __future__ import annotations

import hashlib

import pytest
from channels_app.models import Channel, Consent, Delivery, MessageTemplate, Suppression
from channels_app.services.consent import address_digest, address_suppress, consent_set
from channels_app.services.links import link_url
from journeys.choices import ApiScope
from journeys.models import Customer
from tests.apiclient import Api, make_token
from tests.channels_app.factories import topic
from tests.factories import live_workflow

pytestmark = pytest.mark.django_db

ADDRESS = "person44850@mail.example.org"


@pytest.fixture
def shop(smtp):
    """An email channel on the local SMTP server, a product-updates newsletter and a receipt, a
    journey that mails the newsletter after each order, and a backend's token."""
    Channel.objects.create(name="email", kind="email", provider="smtp", settings={"from": "shop@example.com"})
    MessageTemplate.objects.create(name="news", channel_kind="email", topic=topic("product_updates"),
                                   subject="News for {{ profile.first_name }}", body="Hello")
    MessageTemplate.objects.create(name="receipt", channel_kind="email", topic=topic("transactional"),
                                   subject="Receipt", body="Thanks")
    live_workflow(name="after order", definition={"trigger_event": "Order Completed", "steps": [
        {"key": "mail", "kind": "send_message", "config": {"channel": "email", "template": "news"}}]})
    _, key = make_token(ApiScope.SEND, ApiScope.CUSTOMERS_READ, ApiScope.CUSTOMERS_WRITE, name="backend")
    return Api(key)


def message(shop, on_commit, template, key, **to):
    with on_commit():
        response = shop.post("messages", {"idempotency_key": key, "template": template, **to})
    assert response.status_code in (200, 202), response.body
    return Delivery.objects.get(pk=response.body["delivery"]["id"])


def erase(shop, customer, on_commit):
    with on_commit():
        assert shop.delete(f"customers/{customer.pk}").status_code == 202
    assert Customer.objects.get(pk=customer.pk).erased_at is not None


def client_path(purpose: str, **data) -> str:
    return link_url(purpose=purpose, data=data).split("8000", 1)[1]


def no_address_kept():
    """Nothing of the address in any suppression (nor its bare hash)."""
    bare = hashlib.sha256(ADDRESS.encode()).hexdigest()
    for row in Suppression.objects.values_list("digest", "channel_kind", "status"):
        assert not any(ADDRESS in str(v) or bare[:16] in str(v) for v in row), row


def test_a_one_click_unsubscribe_holds_after_erasure_for_journeys_and_the_api(shop, post, client, smtp, on_commit):
    # given a customer who unsubscribed from the newsletter with the one-click link of a real email
    post("identify", userId="c44850", traits={"email": ADDRESS, "first_name": "Fn44850"})
    first = message(shop, on_commit, "news", "n1", user_id="c44850")
    assert first.status == "sent" and len(smtp.messages) == 1
    assert client.post(client_path("unsubscribe", c=first.customer_id, k="email", t="product_updates", d=first.pk),
                       {"List-Unsubscribe": "One-Click"}).status_code == 200

    # when they are erased, and their app (a stale client) identifies them again with the same address
    erase(shop, first.customer, on_commit)
    post("identify", userId="c44850", traits={"email": ADDRESS, "first_name": "Fn44850"})
    back = Customer.objects.get(external_id="c44850")
    assert back.pk != first.customer_id and not Consent.objects.filter(customer=back).exists()

    # then neither the messages API nor a journey mails them the newsletter; a receipt still goes
    news = message(shop, on_commit, "news", "n2", user_id="c44850")
    post(userId="c44850", event="Order Completed")
    journey = Delivery.objects.get(customer=back, run_id__isnull=False)
    receipt = message(shop, on_commit, "receipt", "r1", user_id="c44850")
    assert (news.status, news.reason) == ("suppressed", "topic_opt_out")
    assert (journey.status, journey.reason) == ("suppressed", "topic_opt_out")
    assert receipt.status == "sent" and [m["Subject"] for m in smtp.messages] == ["News for Fn44850", "Receipt"]
    # and what was kept names no one: a keyed digest of the address, the channel and topic objected to
    [kept] = Suppression.objects.all()
    assert (kept.digest, kept.channel_kind, kept.topic.slug, kept.status) == (
        address_digest("email", ADDRESS), "email", "product_updates", "opted_out")
    no_address_kept()


def test_do_not_contact_holds_for_a_raw_address_until_the_person_lifts_it_in_the_preference_centre(
        shop, post, client, smtp, on_commit):
    # given a customer on global do-not-contact through the preference centre, erased
    post("identify", userId="c44860", traits={"email": ADDRESS, "phone": "+44 20 7946 0860"})
    customer = Customer.objects.get(external_id="c44860")
    assert client.post(client_path("preferences", c=customer.pk), {"do_not_contact": "on"}).status_code == 200
    erase(shop, customer, on_commit)
    assert ("", None) in set(Suppression.objects.values_list("channel_kind", "topic"))
    assert Suppression.objects.filter(digest=address_digest("sms", "+442079460860")).exists()  # their phone too
    no_address_kept()

    # when a receipt is requested to their address (a new profile known by it)
    receipt = message(shop, on_commit, "receipt", "r1", to=ADDRESS.upper())

    # then even the receipt is suppressed, and their new profile's preference centre shows the objection
    assert (receipt.status, receipt.reason) == ("suppressed", "do_not_contact") and smtp.messages == []
    back = receipt.customer
    page = client.get(client_path("preferences", c=back.pk)).content.decode()
    assert 'name="do_not_contact"' in page and 'name="do_not_contact" checked' in page.replace("  ", " ")

    # when the person takes do-not-contact off and turns the newsletter on, there: an explicit opt-in
    assert client.post(client_path("preferences", c=back.pk), {"t:product_updates:email": "on"}).status_code == 200

    # then the suppressions of those choices under this address are gone (their phone number's stay:
    # nobody with it said anything), and both messages go
    assert list(Suppression.objects.filter(channel_kind="", topic=None).values_list("digest", flat=True)) == [
        address_digest("sms", "+442079460860")]
    assert message(shop, on_commit, "receipt", "r2", to=ADDRESS).status == "sent"
    assert message(shop, on_commit, "news", "n1", to=ADDRESS).status == "sent"


def test_an_import_or_a_stale_opt_in_does_not_lift_a_suppression_but_ops_recording_an_opt_in_does(
        shop, post, on_commit, django_user_model):
    from channels_app.services.consent import consent_record_by_operator

    post("identify", userId="c44870", traits={"email": ADDRESS})
    customer = Customer.objects.get(external_id="c44870")
    consent_set(customer=customer, channel_kind="email", topic=None, status="opted_out", source="admin",
                reason="asked by phone")
    erase(shop, customer, on_commit)
    post("identify", userId="c44870", traits={"email": ADDRESS})
    back = Customer.objects.get(external_id="c44870")

    # a CRM re-import carrying an old opt-in
    consent_set(customer=back, channel_kind="email", topic=None, status="opted_in", source="import job 7")
    assert message(shop, on_commit, "news", "n1", user_id="c44870").reason == "channel_opt_out"

    # ops record the person's new opt-in on the Consent form, with the reason
    ops = django_user_model.objects.create_user("ops-1", password="x", is_staff=True)
    consent_record_by_operator(customer=back, channel_kind="email", topic=None, status="opted_in", actor=ops,
                               reason="customer called to subscribe again")
    assert not Suppression.objects.exists()
    assert message(shop, on_commit, "news", "n2", user_id="c44870").status == "sent"


def test_a_hard_bounce_mark_is_the_keyed_digest_and_holds_the_returning_address(shop, post, smtp, on_commit):
    # given an address that bounced for good
    post("identify", userId="c44880", traits={"email": ADDRESS})
    customer = Customer.objects.get(external_id="c44880")
    address_suppress(customer=customer, channel_kind="email", address=ADDRESS, detail="550 no such user")

    # then the consent names it by the same keyed digest an erasure keeps (no bare hash of it)
    consent = Consent.objects.get(customer=customer)
    assert consent.source == "hard_bounce:" + address_digest("email", ADDRESS)
    assert hashlib.sha256(ADDRESS.encode()).hexdigest()[:16] not in consent.source

    # when they are erased and the address comes back with a receipt
    erase(shop, customer, on_commit)
    receipt = message(shop, on_commit, "receipt", "r1", to=ADDRESS)

    # then it is not tried (every try costs the sender's reputation); another address of theirs is
    assert (receipt.status, receipt.reason) == ("suppressed", "undeliverable")
    [kept] = Suppression.objects.all()
    assert (kept.digest, kept.status) == (consent.source.removeprefix("hard_bounce:"), consent.source)
    assert message(shop, on_commit, "receipt", "r2", to="new44880@mail.example.org").status == "sent"


def test_a_bounce_mark_written_by_an_older_release_still_holds_and_is_kept_keyed_by_erasure(shop, post, on_commit):
    post("identify", userId="c44890", traits={"email": ADDRESS})
    customer = Customer.objects.get(external_id="c44890")
    legacy = "hard_bounce:" + hashlib.sha256(ADDRESS.encode()).hexdigest()[:16]
    Consent.objects.create(customer=customer, channel_kind="email", status="opted_out", source=legacy,
                           updated_at=customer.first_seen)

    assert message(shop, on_commit, "receipt", "r1", user_id="c44890").reason == "undeliverable"
    erase(shop, customer, on_commit)
    assert message(shop, on_commit, "receipt", "r2", to=ADDRESS).reason == "undeliverable"
    assert list(Suppression.objects.values_list("status", flat=True)) == [
        "hard_bounce:" + address_digest("email", ADDRESS)]


def test_the_digest_is_keyed_by_privacy_digest_key(settings):
    settings.PRIVACY_DIGEST_KEY = ""
    from_secret = address_digest("email", ADDRESS)
    settings.PRIVACY_DIGEST_KEY = "a-dedicated-key-kept-across-secret-key-rotations"
    dedicated = address_digest("email", ADDRESS)
    settings.SECRET_KEY = "rotated-" + settings.SECRET_KEY

    # a dedicated key outlives a SECRET_KEY rotation; the address is read in one spelling
    assert from_secret != dedicated == address_digest("email", " Person44850@Mail.Example.org ")
    assert len(dedicated) == 32 and dedicated != hashlib.sha256(ADDRESS.encode()).hexdigest()[:32]
