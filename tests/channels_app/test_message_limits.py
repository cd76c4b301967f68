"""Size limits a vendor would refuse: a push payload over 4 KB, an SMS over the maximum of segments.
Refused when rendered (a template_error naming the limit; 422 on the messages API), never sent."""

from __future__ import annotations

import pytest

from channels_app.models import MessageTemplate
from channels_app.providers import OutgoingMessage, PermanentError, get_provider
from channels_app.services import message_send
from journeys.choices import ApiScope
from tests.apiclient import Api, make_token
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def push(vendor, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_FCM_TOKEN", "ya29.token")
    return ChannelFactory(name="push", kind="push", provider="fcm", settings={
        "base_url": vendor.url, "project_id": "shop", "access_token_env": "JOURNEYS_SECRET_TEST_FCM_TOKEN"})


def send(channel, on_commit, text, key="k"):
    customer = CustomerFactory(external_id=f"c-{key}", phone="+15550001", traits={"push_token": "device-1"})
    with on_commit():
        delivery = message_send(customer=customer, template=TemplateFactory(subject="Hi", body="{{ journey.text }}"),
                                channel=channel, idempotency_key=key, context={"journey": {"text": text}})
    delivery.refresh_from_db()
    return delivery


@pytest.mark.parametrize("text", ["x" * 5000, "😀" * 1200])
def test_a_push_over_4kb_fails_naming_the_limit_and_is_not_sent(push, vendor, on_commit, text):
    # when a push's rendered text is over FCM's 4,096 bytes (measured as UTF-8 JSON)
    delivery = send(push, on_commit, text)

    # then it fails for good, saying so, and the vendor gets nothing
    assert (delivery.status, delivery.reason) == ("failed", "template_error")
    assert "4,096-byte limit" in delivery.error
    assert vendor.requests == []


def test_a_push_that_fits_goes_as_utf8(push, vendor, on_commit):
    delivery = send(push, on_commit, "😀" * 900)  # 3,600 bytes as UTF-8 (10,800 ASCII-escaped)

    assert delivery.status == "sent"
    assert "😀".encode() in vendor.requests[0].body


def test_a_push_that_fits_only_without_its_data_fails_at_render_not_at_the_vendor(push, vendor, on_commit):
    # given a text whose notification alone is under 4,096 bytes, but not with the data the
    # provider sends beside it (the delivery id, the customer, the step)
    text = "x" * (4096 - len('{"notification":{"title":"Hi","body":""}}') - 10)

    delivery = send(push, on_commit, text, key="data-counts")

    # then it is refused when rendered, as a template error, and the vendor gets nothing
    assert (delivery.status, delivery.reason) == ("failed", "template_error")
    assert "4,096-byte limit" in delivery.error and vendor.requests == []


def test_the_fcm_provider_refuses_a_payload_over_4kb_itself():
    provider = get_provider("fcm", {"base_url": "https://fcm.example", "project_id": "p"})
    message = OutgoingMessage(delivery_id=1, idempotency_key="k", kind="push", to="t", subject="s", body="x" * 4100)

    with pytest.raises(PermanentError, match="4,096-byte limit"):
        provider.send(message)


def test_an_sms_over_the_maximum_of_segments_is_refused_and_the_encoding_is_recorded(sms, vendor, on_commit):
    # 10 GSM-7 segments of 153 characters fit; one more character does not
    fits = send(sms, on_commit, "a" * 1530, key="fits")
    over = send(sms, on_commit, "a" * 1531, key="over")
    # an emoji makes it UCS-2: 67 characters a segment
    emoji = send(sms, on_commit, "😀" * 340, key="ucs2")

    assert fits.status == "sent" and fits.notes["sms"] == {"encoding": "GSM-7", "segments": 10}
    assert (over.status, over.reason) == ("failed", "template_error")
    assert "11 segments" in over.error and "GSM-7" in over.error and "maximum of 10" in over.error
    assert emoji.status == "failed" and "UCS-2" in emoji.error
    assert len(vendor.requests) == 1


def test_the_messages_api_refuses_an_oversized_push_with_422(push, vendor, on_commit):
    CustomerFactory(external_id="ada", traits={"push_token": "device-1"})
    MessageTemplate.objects.create(name="alert", channel_kind="push", subject="Hi", body="{{ journey.text }}")
    _, key = make_token(ApiScope.SEND, name="shop")

    with on_commit():
        response = Api(key).post("messages", {"idempotency_key": "k1", "template": "alert", "user_id": "ada",
                                              "data": {"text": "x" * 5000}})

    assert response.status_code == 422, response.body
    assert "4,096-byte limit" in str(response.body)
    assert vendor.requests == []
