from __future__ import annotations

import logging

import pytest

from tests.channels_app.servers import FakeVendor, start_smtp

logging.getLogger("mail.log").setLevel(logging.WARNING)


@pytest.fixture
def smtp(settings):
    """A real SMTP server; Django's SMTP backend is pointed at it."""
    controller, sink = start_smtp()
    settings.EMAIL_HOST, settings.EMAIL_PORT = controller.hostname, controller.port
    settings.EMAIL_USE_TLS, settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = False, "", ""
    settings.EMAIL_TIMEOUT = 5
    yield sink
    controller.stop()


@pytest.fixture
def vendor():
    """A real HTTP server that records requests and fails on demand."""
    server = FakeVendor().start()
    yield server
    server.stop()


@pytest.fixture
def sms(vendor, monkeypatch):
    """A Twilio-style SMS channel on the fake vendor."""
    from tests.channels_app.factories import ChannelFactory

    monkeypatch.setenv("JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "tw")
    return ChannelFactory(name="sms", kind="sms", provider="twilio_sms", settings={
        "base_url": vendor.url, "account_sid": "AC1", "from_number": "+15550000",
        "auth_token_env": "JOURNEYS_SECRET_TEST_TWILIO_TOKEN"})


@pytest.fixture
def chat(vendor, monkeypatch):
    """A chat channel on the fake vendor whose breaker opens at the first failure (cooldown 60 s)."""
    from tests.channels_app.factories import ChannelFactory

    monkeypatch.setenv("JOURNEYS_SECRET_TEST_SLACK_TOKEN", "x")
    return ChannelFactory(name="chat", kind="chat", provider="slack", breaker_threshold=1, breaker_cooldown_s=60,
                          retry_base_s=10, settings={"base_url": vendor.url,
                                                     "bot_token_env": "JOURNEYS_SECRET_TEST_SLACK_TOKEN"})


@pytest.fixture
def chat_messages(chat, django_capture_on_commit_callbacks):
    """`make(n, now=None, key="m")`: n messages to n new customers on the chat channel, recorded
    (queued) but not handed to a worker; returns their ids."""
    from channels_app.services import message_send
    from tests.channels_app.factories import CustomerFactory, TemplateFactory

    def make(n, *, now=None, key="m"):
        template = TemplateFactory()
        with django_capture_on_commit_callbacks(execute=False):
            return [message_send(customer=CustomerFactory(traits={"chat_id": f"U{i}"}), template=template,
                                 channel=chat, idempotency_key=f"{key}{i}", context={}, now=now).pk
                    for i in range(n)]

    return make


@pytest.fixture
def post(api, django_capture_on_commit_callbacks):
    """`post("identify", userId=..., traits=...)`: the client app's tracking call (/v1), with the
    work it starts (the workflows it triggers, the messages they send)."""
    def call(kind="track", **body):
        with django_capture_on_commit_callbacks(execute=True):
            assert api.post(kind, body).status_code == 200

    return call


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks):
    """Run a block and then its on-commit callbacks (the sends), as a real commit would."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture(autouse=True)
def _channel_defaults(request):
    """The default topics and the deliveries schedule come from a data migration; a
    transactional test elsewhere in the suite flushes them, so put them back (idempotent)."""
    if request.node.get_closest_marker("django_db") is None:
        yield
        return
    from importlib import import_module

    from django.apps import apps

    import_module("channels_app.migrations.0003_delivery_schedule_and_topics").forwards(apps, None)
    yield


# The day2ops QA's "order confirm": each Order Completed posts the order to a webhook channel, through a
# JSON template that renders invalid JSON for an order without a total (%s: a filter, e.g. |default:0).
HOOK = '{"ref": "{{ event.properties.ref }}", "user": "{{ profile.user_id }}", "total": {{ event.properties.total%s }}}'


@pytest.fixture
def order_hook(vendor, monkeypatch):
    """The workflow 'order confirm' (live) and its template 'order-hook' on the webhook channel 'hook'."""
    return hook_workflow(vendor, monkeypatch, name="order confirm", definition={
        "trigger_event": "Order Completed",
        "steps": [{"key": "hook", "kind": "send_message", "config": {"channel": "hook", "template": "order-hook"}}]})


def hook_workflow(vendor, monkeypatch, *, name: str, definition: dict):
    """The webhook channel 'hook', its template 'order-hook' (returned) and a live workflow."""
    from tests.channels_app.factories import ChannelFactory, TemplateFactory
    from tests.factories import live_workflow

    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "hook-secret")
    ChannelFactory(name="hook", kind="webhook", provider="webhook",
                   settings={"url": vendor.url, "secret_env": "JOURNEYS_SECRET_TEST_HOOK"})
    template = TemplateFactory(name="order-hook", subject="", body=HOOK % "")
    live_workflow(name=name, definition=definition)
    return template


def orders(api, capture, *orders: dict) -> None:
    """Post Order Completed events (one per dict: its properties, `ref` names the order and its customer)
    through /v1/batch, and run what they set off (processing, sending) as a commit would."""
    batch = [{"type": "track", "userId": f"u-{o['ref']}", "event": "Order Completed", "messageId": f"m-{o['ref']}",
              "properties": o} for o in orders]
    with capture(execute=True):
        assert api.post("batch", {"batch": batch}).status_code == 200
