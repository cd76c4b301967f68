"""Channel settings: URLs go only to allowed addresses and secrets only come from
JOURNEYS_SECRET_ variables — when the channel is saved and again when a message is sent."""

from __future__ import annotations

import pytest

from channels_app.models import Channel
from channels_app.services import message_send
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory
from tests.channels_app.test_admin import channel_form

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_allow_list(settings):
    settings.OUTBOUND_ALLOWED_HOSTS, settings.OUTBOUND_ALLOWED_NETWORKS = [], []


@pytest.mark.parametrize("settings_json, message", [
    ('{"base_url": "http://127.0.0.1:9000", "account_sid": "AC1"}', "base_url: 127.0.0.1 resolves to 127.0.0.1"),
    ('{"base_url": "file:///etc/passwd", "account_sid": "AC1"}', "base_url: scheme &#x27;file&#x27; is not allowed"),
    ('{"base_url": "http://169.254.169.254", "account_sid": "AC1"}', "base_url: 169.254.169.254 resolves"),
    ('{"base_url": "https://api.twilio.example", "auth_token_env": "PATH"}', "auth_token_env: &#x27;PATH&#x27; is not"),
    ('{"base_url": "https://api.twilio.example", "auth_token_env": "DATABASE_URL"}', "JOURNEYS_SECRET_..."),
    ('{"base_url": 5}', "base_url: must be a URL string"),
])
def test_the_admin_refuses_private_urls_and_unprefixed_secret_names(admin_client, no_allow_list, settings_json,
                                                                    message):
    response = admin_client.post("/admin/channels_app/channel/add/", channel_form(settings=settings_json))

    assert response.status_code == 200 and message in response.content.decode()
    assert not Channel.objects.exists()


def test_an_smtp_channel_host_is_checked_like_a_url(admin_client, no_allow_list):
    response = admin_client.post("/admin/channels_app/channel/add/", channel_form(
        name="mail", kind="email", provider="smtp", settings='{"host": "127.0.0.1", "port": 6379}'))
    assert response.status_code == 200 and "host: 127.0.0.1 resolves to 127.0.0.1" in response.content.decode()


def test_a_stored_channel_that_breaks_the_rules_fails_clearly_and_sends_nothing(vendor, no_allow_list, on_commit,
                                                                             monkeypatch, admin_client):
    # given channels saved before the rules existed: one reads PATH, one points at a local listener
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "t")
    leaky = ChannelFactory(name="sms", kind="sms", provider="twilio_sms",
                           settings={"base_url": "https://sms.example.com", "account_sid": "AC1",
                                     "auth_token_env": "PATH"})
    local = ChannelFactory(name="sms2", kind="sms", provider="twilio_sms",
                           settings={"base_url": vendor.url, "account_sid": "AC1",
                                     "auth_token_env": "JOURNEYS_SECRET_TEST_TWILIO_TOKEN"})
    customer = CustomerFactory(phone="+15550001")

    # when messages are sent on them
    with on_commit():
        first = message_send(customer=customer, template=TemplateFactory(), channel=leaky, idempotency_key="a",
                             context={})
        second = message_send(customer=customer, template=TemplateFactory(), channel=local, idempotency_key="b",
                              context={})
    first.refresh_from_db()
    second.refresh_from_db()

    # then both fail for good with the reason, and the local listener heard nothing
    assert (first.status, first.reason) == ("failed", "permanent_error")
    assert "'PATH' is not a secret variable name" in first.error
    assert (second.status, second.reason) == ("failed", "permanent_error")
    assert "127.0.0.1" in second.error and vendor.requests == []
    # and the channel's page says what to fix
    page = admin_client.get(f"/admin/channels_app/channel/{leaky.pk}/change/").content.decode()
    assert "auth_token_env: &#x27;PATH&#x27; is not a secret variable name" in page


def test_inbound_sms_with_an_unreadable_token_name_refuses_everything(client, monkeypatch):
    from channels_app.services.links import link_url

    sms = ChannelFactory(name="sms", kind="sms", provider="console", settings={"auth_token_env": "PATH"})
    path = link_url(purpose="inbound", data={"ch": sms.pk}).split("8000", 1)[1]
    response = client.post(path, {"From": "+15550001", "Body": "STOP"})
    assert response.status_code == 403
