"""The webhook channel: a template written as JSON keeps its shape whatever the customer data holds,
and each request is signed (X-Signature, and the Standard Webhooks headers)."""

from __future__ import annotations

import pytest

from channels_app.services import message_send
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook(vendor, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "hook-secret")
    return ChannelFactory(name="hook", kind="webhook", provider="webhook",
                          settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK"})


def send(channel, on_commit, body, text, key="k"):
    template = TemplateFactory(subject="", body=body)
    with on_commit():
        delivery = message_send(customer=CustomerFactory(external_id=f"c-{key}"), template=template, channel=channel,
                                idempotency_key=key, context={"journey": {"text": text}})
    delivery.refresh_from_db()
    return delivery


@pytest.mark.parametrize("text", ['x", "amount": 1000000, "role": "admin', 'He said "hi"', "back\\slash\nline"])
def test_customer_data_with_quotes_stays_inside_its_json_string(hook, vendor, on_commit, text):
    # given a webhook template written as JSON, with a value from the customer's data
    # when that value holds quotes, backslashes or line breaks
    delivery = send(hook, on_commit, '{"text": "{{ journey.text }}", "kind": "note"}', text)

    # then the receiver gets the same document shape, with the value intact
    assert delivery.status == "sent"
    [request] = vendor.requests
    assert request.json()["payload"] == {"text": text, "kind": "note"}


def test_a_json_body_that_does_not_parse_fails_the_delivery_and_sends_nothing(hook, vendor, on_commit):
    # given a template that puts a text value outside quotes
    delivery = send(hook, on_commit, '{"text": {{ journey.text }}}', 'x, "role": "admin"')

    # then the delivery fails as a template error naming JSON, and nothing is posted
    assert (delivery.status, delivery.reason) == ("failed", "template_error")
    assert "not valid JSON" in delivery.error
    assert vendor.requests == []


def test_a_plain_text_body_still_goes_as_text(hook, vendor, on_commit):
    delivery = send(hook, on_commit, 'Hello {{ journey.text }}', 'a "quoted" word')

    assert delivery.status == "sent"
    assert vendor.requests[0].json()["payload"] == {"text": 'Hello a "quoted" word'}


@pytest.mark.parametrize("secret", ["hook-secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
def test_a_standard_webhooks_receiver_verifies_the_channel_and_the_old_header_still_checks(
        vendor, monkeypatch, on_commit, secret):
    import base64

    from standardwebhooks import Webhook

    from channels_app.providers.http import webhook_signature_valid

    # given a webhook channel with a secret (a plain one, or a whsec_ one)
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", secret)
    channel = ChannelFactory(name="hook-sw", kind="webhook", provider="webhook",
                             settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK"})

    # when a message goes out
    delivery = send(channel, on_commit, '{"text": "{{ journey.text }}"}', "hi")

    # then a receiver written from README verifies it with a Standard Webhooks library ...
    [request] = vendor.requests
    key = secret if secret.startswith("whsec_") else "whsec_" + base64.b64encode(secret.encode()).decode()
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert Webhook(key).verify(request.body, headers)["payload"] == {"text": "hi"}
    assert headers["webhook-id"] == delivery.idempotency_key == headers["idempotency-key"]
    # ... and the older X-Signature still verifies for receivers built on it
    assert webhook_signature_valid(secret=secret, timestamp=headers["x-timestamp"], body=request.body,
                                   header=headers["x-signature"])
