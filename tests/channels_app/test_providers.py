"""Provider adapters speak their vendor's shape to a real HTTP server; secrets come from the environment."""

from __future__ import annotations

import pytest

from channels_app.services import message_send
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def customer():
    return CustomerFactory(external_id="c1", phone="+15550001",
                           traits={"push_token": "device-token-1", "chat_id": "U123", "first_name": "Cy"})


def send(channel, customer, on_commit, key="k"):
    template = TemplateFactory(subject="Title for {{ profile.first_name }}", body="Body & <text>")
    with on_commit():
        delivery = message_send(customer=customer, template=template, channel=channel, idempotency_key=key, context={})
    delivery.refresh_from_db()
    return delivery


def test_fcm_push_json_with_bearer_token_from_env(vendor, customer, on_commit, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_FCM_TOKEN", "ya29.token")
    push = ChannelFactory(name="push", kind="push", provider="fcm",
                          settings={"base_url": vendor.url, "project_id": "shop", "access_token_env": "JOURNEYS_SECRET_TEST_FCM_TOKEN"})

    delivery = send(push, customer, on_commit)

    [request] = vendor.requests
    assert request.path == "/v1/projects/shop/messages:send"
    assert request.headers["Authorization"] == "Bearer ya29.token"
    message = request.json()["message"]
    assert message["token"] == "device-token-1"
    assert message["notification"] == {"title": "Title for Cy", "body": "Body & <text>"}
    # a message outside any journey has no run: the key is left out, not sent as the text "None"
    assert message["data"] == {"delivery_id": str(delivery.pk), "customer": customer.external_id, "step": ""}
    assert delivery.provider_message_id == "projects/p/messages/9"


def test_voice_call_is_twiml_with_escaped_text(vendor, customer, on_commit, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "t")
    voice = ChannelFactory(name="voice", kind="voice", provider="twilio_voice",
                           settings={"base_url": vendor.url, "account_sid": "AC9", "from_number": "+1",
                                     "auth_token_env": "JOURNEYS_SECRET_TEST_TWILIO_TOKEN"})
    send(voice, customer, on_commit)
    [request] = vendor.requests
    assert request.path == "/2010-04-01/Accounts/AC9/Calls.json"
    assert request.form()["Twiml"] == '<Response><Say voice="alice">Body &amp; &lt;text&gt;</Say></Response>'


def test_chat_slack_style_and_ok_false_is_permanent(vendor, customer, on_commit, monkeypatch):
    from tests.channels_app.servers import Plan

    monkeypatch.setenv("JOURNEYS_SECRET_TEST_SLACK_TOKEN", "xoxb-1")
    chat = ChannelFactory(name="chat", kind="chat", provider="slack",
                          settings={"base_url": vendor.url, "bot_token_env": "JOURNEYS_SECRET_TEST_SLACK_TOKEN"})
    ok = send(chat, customer, on_commit, key="a")
    vendor.plan(Plan(200, {"ok": False, "error": "channel_not_found"}))
    bad = send(chat, customer, on_commit, key="b")

    assert vendor.requests[0].path == "/api/chat.postMessage"
    assert vendor.requests[0].json() == {"channel": "U123", "text": "Body & <text>"}
    assert vendor.requests[0].headers["Authorization"] == "Bearer xoxb-1"
    assert ok.status == "sent" and ok.provider_message_id == "1.2"
    assert (bad.status, bad.reason) == ("failed", "permanent_error") and "channel_not_found" in bad.error


def test_a_missing_secret_fails_clearly_and_sends_nothing(vendor, customer, on_commit, monkeypatch):
    monkeypatch.delenv("JOURNEYS_SECRET_TEST_NOT_SET", raising=False)
    sms = ChannelFactory(name="sms", kind="sms", provider="twilio_sms",
                         settings={"base_url": vendor.url, "account_sid": "AC1", "auth_token_env": "JOURNEYS_SECRET_TEST_NOT_SET"})
    delivery = send(sms, customer, on_commit)
    assert (delivery.status, delivery.reason) == ("failed", "permanent_error")
    assert "JOURNEYS_SECRET_TEST_NOT_SET" in delivery.error and vendor.requests == []


def test_unreachable_provider_is_transient(customer, on_commit, monkeypatch):
    from tests.channels_app.servers import free_port

    monkeypatch.setenv("JOURNEYS_SECRET_TEST_SLACK_TOKEN", "x")
    chat = ChannelFactory(name="chat", kind="chat", provider="slack",
                          settings={"base_url": f"http://127.0.0.1:{free_port()}", "bot_token_env": "JOURNEYS_SECRET_TEST_SLACK_TOKEN"})
    delivery = send(chat, customer, on_commit)
    assert (delivery.status, delivery.reason) == ("deferred", "retry")


def test_secret_from_the_secrets_setting_when_not_in_the_environment(vendor, customer, on_commit, settings,
                                                                     monkeypatch):
    monkeypatch.delenv("JOURNEYS_SECRET_TEST_FROM_SETTING", raising=False)
    settings.CHANNEL_SECRETS = {"JOURNEYS_SECRET_TEST_FROM_SETTING": "from-vault"}
    chat = ChannelFactory(name="chat", kind="chat", provider="slack",
                          settings={"base_url": vendor.url, "bot_token_env": "JOURNEYS_SECRET_TEST_FROM_SETTING"})
    assert send(chat, customer, on_commit).status == "sent"
    assert vendor.requests[0].headers["Authorization"] == "Bearer from-vault"
