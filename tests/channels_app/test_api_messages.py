"""Transactional messages through the management API: to a customer or a raw address, with
per-message data, consent applied, idempotent by key, status readable by id."""

from __future__ import annotations

import pytest

from channels_app.models import Channel, Consent, Delivery, MessageTemplate, Topic
from journeys.choices import ApiScope
from journeys.models import Customer, Identity
from tests.apiclient import Api, make_token
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    _, key = make_token(ApiScope.SEND, name="shop")
    return Api(key)


@pytest.fixture
def receipt(smtp):
    """An email channel on the local SMTP server and a receipt template on a transactional topic."""
    Channel.objects.create(name="email", kind="email", provider="smtp", settings={"from": "shop@example.com"})
    topic, _ = Topic.objects.get_or_create(slug="receipts", defaults={"name": "Receipts", "transactional": True})
    topic.transactional = True
    topic.save()
    return MessageTemplate.objects.create(name="receipt", channel_kind="email", topic=topic,
                                          subject="Order {{ journey.order_id }}",
                                          body="Thanks {{ profile.first_name }}, total {{ journey.total }}")


def send(api, on_commit, **body):
    with on_commit():
        return api.post("messages", {"idempotency_key": "k1", "template": "receipt", **body})


def test_a_message_to_a_customer_with_data_is_sent_and_its_status_readable(api, receipt, smtp, on_commit):
    # given a customer
    customer = CustomerFactory(external_id="ada", email="ada@example.com", traits={"first_name": "Ada"})

    # when the API sends the receipt with per-message data
    response = send(api, on_commit, user_id="ada", data={"order_id": "A-17", "total": "42.00"})

    # then the delivery id comes back, the mail arrives rendered with the data, the status says sent
    assert response.status_code == 202, response.body
    delivery_id = response.body["delivery"]["id"]
    assert [m["Subject"] for m in smtp.messages] == ["Order A-17"]
    assert "Thanks Ada, total 42.00" in smtp.messages[0].get_body(("plain",)).get_content()
    status = api.get(f"messages/{delivery_id}").body
    assert status["status"] == "sent" and status["attempts"] == 1 and status["customer_id"] == customer.pk


def test_a_replay_of_the_key_returns_the_same_delivery_and_sends_nothing_more(api, receipt, smtp, on_commit):
    CustomerFactory(external_id="ada", email="ada@example.com")
    first = send(api, on_commit, user_id="ada", data={"order_id": "1"})
    again = send(api, on_commit, user_id="ada", data={"order_id": "1"})

    assert again.status_code == 200 and again.body["replayed"] is True
    assert again.body["delivery"]["id"] == first.body["delivery"]["id"]
    assert len(smtp.messages) == 1 and Delivery.objects.count() == 1

    # the same key for another message is refused, naming the key
    other = send(api, on_commit, user_id="ada", data={"order_id": "2"})
    assert other.status_code == 422 and other.body["field"] == "idempotency_key"


def test_a_raw_address_gets_its_own_profile_and_consent_still_applies(api, receipt, smtp, on_commit):
    # when a receipt goes to an address nobody has
    response = send(api, on_commit, to="New@Example.com", data={"order_id": "9"})

    # then it is sent to that address and a profile known by it now exists
    assert response.status_code == 202 and smtp.messages[0]["To"] == "New@Example.com"
    owner = Identity.objects.get(kind="email", value="new@example.com").customer
    assert response.body["delivery"]["customer_id"] == owner.pk

    # and when that person is on global do-not-contact, the next message is suppressed with the reason
    Consent.objects.create(customer=owner, channel_kind="", topic=None, status="opted_out", source="admin",
                           updated_at=owner.created_at)
    with on_commit():
        refused = api.post("messages", {"idempotency_key": "k2", "template": "receipt", "to": "new@example.com"})
    assert refused.body["delivery"]["status"] == "suppressed"
    assert refused.body["delivery"]["reason"] == "do_not_contact" and len(smtp.messages) == 1


def test_a_transactional_topic_passes_a_marketing_opt_out(api, receipt, smtp, on_commit):
    customer = CustomerFactory(external_id="bo", email="bo@example.com")
    marketing, _ = Topic.objects.get_or_create(slug="news", defaults={"name": "News"})
    Consent.objects.create(customer=customer, channel_kind="email", topic=marketing, status="opted_out",
                           source="preference_centre", updated_at=customer.created_at)
    response = send(api, on_commit, user_id="bo")
    assert response.body["delivery"]["status"] == "queued"  # recorded; it goes out after commit
    assert api.get(f"messages/{response.body['delivery']['id']}").body["status"] == "sent"
    assert len(smtp.messages) == 1


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"template": "receipt", "user_id": "ada"}, 400, "idempotency_key"),
    ({"idempotency_key": "x", "user_id": "ada"}, 400, "template"),
    ({"idempotency_key": "x", "template": "receipt"}, 400, "to"),
    ({"idempotency_key": "x", "template": "receipt", "user_id": "ada", "to": "a@b.c"}, 400, "to"),
    ({"idempotency_key": "x", "template": "nope", "user_id": "ada"}, 422, "template"),
    ({"idempotency_key": "x", "template": "receipt", "user_id": "ada", "channel": "nope"}, 422, "channel"),
    ({"idempotency_key": "x", "template": "receipt", "user_id": "nobody"}, 400, "user_id"),
    ({"idempotency_key": "x", "template": "receipt", "to": "not an address"}, 422, "to"),
    ({"idempotency_key": "x", "template": "receipt", "user_id": "ada", "data": [1]}, 400, "data"),
], ids=["no-key", "no-template", "no-recipient", "two-recipients", "unknown-template", "unknown-channel",
        "unknown-user", "bad-address", "data-not-object"])
def test_bad_input_names_the_field_and_sends_nothing(api, receipt, body, status, field):
    CustomerFactory(external_id="ada", email="ada@example.com")
    response = api.post("messages", body)
    assert (response.status_code, response.body["field"]) == (status, field), response.body
    assert not Delivery.objects.exists()
    assert Customer.objects.count() == 1


@pytest.mark.parametrize(("kind", "to", "message"), [
    ("sms", "1" * 65, "too long for a phone number"),
    ("sms", "+" + "4" * 21, "too long for a phone number"),
    ("voice", "+1 555 " + "7" * 60, "too long for a phone number"),
    ("email", "a" * 250 + "@example.com", "too long for an email address"),
], ids=["65-digits", "21-digits", "voice-spaced", "email-262"])
def test_an_address_too_long_for_its_channel_is_a_422_naming_to(api, kind, to, message):
    # given a channel and a transactional template of that kind
    topic, _ = Topic.objects.get_or_create(slug="codes", defaults={"name": "Codes", "transactional": True})
    Channel.objects.create(name=kind, kind=kind, provider="console")
    MessageTemplate.objects.create(name="code", channel_kind=kind, topic=topic, subject="Code", body="Code 1")

    # when a message goes to an address longer than any of that kind
    response = api.post("messages", {"idempotency_key": "x", "template": "code", "to": to})

    # then it is refused naming `to`, and nothing is stored
    assert (response.status_code, response.body["field"]) == (422, "to"), response.body
    assert message in response.body["message"]
    assert not Delivery.objects.exists() and not Customer.objects.exists()


def test_status_is_readable_only_for_messages_sent_through_the_api(api, receipt):
    from channels_app.services.sending import message_send

    customer = CustomerFactory(email="c@example.com")
    journey_message = message_send(customer=customer, template=receipt, channel=Channel.objects.get(),
                                   idempotency_key="run:1:mail:1", context={})
    assert api.get(f"messages/{journey_message.pk}").status_code == 404


@pytest.mark.parametrize("data", [{}, {"subject": None, "text": None}], ids=["absent", "null"])
def test_a_message_whose_data_is_all_missing_is_refused_naming_it_and_nothing_is_kept(api, smtp, on_commit, data):
    Channel.objects.create(name="email", kind="email", provider="smtp", settings={"from": "shop@example.com"})
    MessageTemplate.objects.create(name="note", channel_kind="email", subject="{{ journey.subject }}",
                                   body="{{ journey.text }}")
    CustomerFactory(external_id="ada", email="ada@example.com")

    response = send(api, on_commit, template="note", user_id="ada", data=data)

    assert (response.status_code, response.body["field"]) == (422, "data.subject"), response.body
    assert "rendered empty" in response.body["message"]
    assert not Delivery.objects.exists() and smtp.messages == []
    # with the data, the same key sends it
    assert send(api, on_commit, template="note", user_id="ada",
                data={"subject": "Hi", "text": "There"}).status_code == 202


def test_a_message_empty_but_for_its_html_wrapper_is_refused_too(api, smtp, on_commit):
    Channel.objects.create(name="email", kind="email", provider="smtp", settings={"from": "shop@example.com"})
    MessageTemplate.objects.create(name="wrapped", channel_kind="email", subject="{{ journey.subject }}",
                                   body="{{ journey.text }}", html_body="<html><body><p>{{ journey.text }}</p></body></html>")
    CustomerFactory(external_id="ada", email="ada@example.com")
    response = send(api, on_commit, template="wrapped", user_id="ada")
    assert (response.status_code, response.body["field"]) == (422, "data.subject"), response.body


def test_a_partly_filled_message_goes_out_and_says_what_was_missing(api, receipt, smtp, on_commit):
    CustomerFactory(external_id="ada", email="ada@example.com", traits={"first_name": "Ada"})
    response = send(api, on_commit, user_id="ada", data={"total": "9.90"})
    assert response.status_code == 202
    assert response.body["delivery"]["missing"] == ["journey.order_id"]


def test_a_key_naming_the_person_is_not_kept_and_a_replay_after_their_erasure_sends_nothing(
        api, receipt, smtp, on_commit):
    from channels_app.services.privacy import customer_erase

    # given a receipt whose key names the person, as integrations name keys after what they send
    key = "receipt-ada@example.com-4711"
    first = send(api, on_commit, to="ada@example.com", idempotency_key=key, data={"order_id": "4711"})
    assert first.status_code == 202 and len(smtp.messages) == 1

    # then the key is stored as a digest, and a replay finds the message
    delivery = Delivery.objects.get()
    assert "ada" not in delivery.idempotency_key and "4711" not in delivery.idempotency_key
    assert delivery.idempotency_key.startswith("api:#")
    again = send(api, on_commit, to="ada@example.com", idempotency_key=key, data={"order_id": "4711"})
    assert again.status_code == 200 and again.body["replayed"] is True

    # when Ada is erased, the anonymised message keeps the key's digest and the request's, nothing else
    customer_erase(customer=delivery.customer, actor="test", reason="GDPR")
    delivery.refresh_from_db()
    assert (delivery.to, delivery.body) == ("", "") and list(delivery.notes) == ["api_request"]
    assert "4711" not in delivery.notes["api_request"]

    # and the client's retry is still a replay (nothing sent again), another request with the key still refused
    late = send(api, on_commit, to="ada@example.com", idempotency_key=key, data={"order_id": "4711"})
    assert (late.status_code, late.body["delivery"]["id"]) == (200, delivery.pk) and len(smtp.messages) == 1
    other = send(api, on_commit, to="ada@example.com", idempotency_key=key, data={"order_id": "4712"})
    assert other.status_code == 422 and other.body["field"] == "idempotency_key"


def test_a_key_stored_as_sent_by_an_older_release_is_replayed_and_digested_by_the_erasure(
        api, receipt, smtp, on_commit):
    import hashlib
    import json

    from channels_app.services.privacy import customer_erase

    ada = CustomerFactory(external_id="ada", email="ada@example.com")
    request = {"template": "receipt", "channel": None, "data": {}, "customer": ada.pk, "to": ""}
    bare = hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    old = Delivery.objects.create(idempotency_key="api:receipt-ada", customer=ada, channel=Channel.objects.get(),
                                  template=receipt, to="ada@example.com", status="sent", notes={"api_request": bare})

    assert send(api, on_commit, user_id="ada", idempotency_key="receipt-ada").body["delivery"]["id"] == old.pk

    customer_erase(customer=ada, actor="test", reason="GDPR")
    old.refresh_from_db()
    assert old.idempotency_key.startswith("api:#") and "ada" not in old.idempotency_key and old.notes == {}
    assert smtp.messages == [] and Delivery.objects.count() == 1


def test_a_message_can_choose_its_locale_overriding_the_customers(api, receipt, smtp, on_commit):
    # given a receipt with fr and pt-BR variants, and a customer whose stored locale is de
    receipt.variants.create(locale="fr", subject="Commande {{ journey.order_id }}")
    receipt.variants.create(locale="pt-BR", subject="Pedido {{ journey.order_id }}")
    CustomerFactory(external_id="ada", email="ada@example.com", locale="de")

    # when the API sends it with locale fr, and to a raw address with pt_BR (as Java spells it)
    first = send(api, on_commit, user_id="ada", data={"order_id": "1"}, locale="fr")
    second = send(api, on_commit, to="new@example.com", data={"order_id": "2"}, locale="pt_BR", idempotency_key="k2")

    # then each is in the variant asked for
    assert (first.status_code, second.status_code) == (202, 202)
    assert [m["Subject"] for m in smtp.messages] == ["Commande 1", "Pedido 2"]
    assert list(Delivery.objects.order_by("pk").values_list("locale", flat=True)) == ["fr", "pt-BR"]
    # and a replay of the key with the same locale is the same message, with another locale it is refused
    assert send(api, on_commit, user_id="ada", data={"order_id": "1"}, locale="fr").status_code == 200
    assert send(api, on_commit, user_id="ada", data={"order_id": "1"}, locale="de").body["field"] == "idempotency_key"


@pytest.mark.parametrize("locale", ["zz zz!!", "fr-", "x" * 40])
def test_a_locale_that_is_no_language_tag_is_refused_naming_it(api, receipt, smtp, on_commit, locale):
    CustomerFactory(external_id="ada", email="ada@example.com")

    response = send(api, on_commit, user_id="ada", data={"order_id": "1"}, locale=locale)

    assert response.status_code == 422 and response.body["field"] == "locale", response.body
    assert "language tag" in response.body["message"]
    assert not Delivery.objects.exists() and smtp.messages == []


def test_the_api_document_describes_the_messages_locale(client):
    document = client.get("/v1/openapi.json").json()
    body = document["paths"]["/api/v1/messages/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert "locale" in schema["properties"] and "locale" not in schema.get("required", [])
    assert "pt-BR" in schema["properties"]["locale"]["description"]
