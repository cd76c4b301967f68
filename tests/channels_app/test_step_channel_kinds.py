"""A step's channel must be of the kind the step uses (QA builder report, defect 1): a webhook step
on an email channel "sent" its payload as an email to nobody, recorded as sent. Webhook steps take
webhook channels only; message steps send on any channel, a webhook channel included (it POSTs
each message as JSON); a version published before the check calls nothing and says why."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from channels_app.models import Delivery
from journeys.engine.compiled import reset_caches
from journeys.models import BusinessUnit, JourneyRun, Step
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.channels_app.factories import ChannelFactory, TemplateFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def channels(db):
    reset_caches()
    ChannelFactory(name="mail", kind="email", provider="console")
    ChannelFactory(name="crm", kind="webhook", provider="webhook", settings={"url": "http://127.0.0.1:9/hooks"})
    TemplateFactory(name="hello", subject="Hello", body="Hi")
    yield BusinessUnit.objects.create(name="Ops", slug="ops")
    reset_caches()


def _build(unit, step: dict, name: str = "hooked"):
    return version_build(workflow=workflow_create(name=name, business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": "Signed Up", "steps": [step]})


@pytest.mark.parametrize("step, field, message", [
    ({"key": "hook", "kind": "webhook", "config": {"channel": "mail", "payload": {"plan": "{{ profile.plan }}"}}},
     "steps[0].config.channel",
     "'mail' is a channel of kind Email; a webhook step needs a channel of kind Webhook (Channels: add one)"),
])
def test_a_step_refuses_a_channel_of_the_wrong_kind_naming_the_field(channels, step, field, message):
    with pytest.raises(ValidationError) as refused:
        _build(channels, step)

    assert refused.value.message_dict == {field: [message]}


def test_steps_on_channels_of_their_kind_are_kept(channels):
    version = _build(channels, {"key": "hook", "kind": "webhook", "config": {"channel": "crm", "payload": {}}})
    _build(channels, {"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "hello"}}, "sent")
    # a message step may send on a webhook channel: it POSTs each message (README, "Webhook channel")
    _build(channels, {"key": "send", "kind": "send_message", "config": {"channel": "crm", "template": "hello"}},
           "posted")
    _build(channels, {"key": "best", "kind": "send_best_channel",
                      "config": {"template": "hello", "channels": ["mail", "crm"]}}, "best")

    assert version.steps.get().config == {"channel": "crm", "payload": {}}


def test_a_live_webhook_step_on_an_email_channel_sends_nothing_and_says_why(channels, api,
                                                                         django_capture_on_commit_callbacks):
    live = version_publish(version=_build(channels, {"key": "hook", "kind": "webhook",
                                                     "config": {"channel": "crm", "payload": {"a": "b"}}}), reason="t")
    Step.objects.filter(version=live).update(config={"channel": "mail", "payload": {"a": "b"}})  # before the check
    reset_caches()

    with django_capture_on_commit_callbacks(execute=True):
        api.post("batch", {"batch": [{"type": "identify", "userId": "u", "traits": {"email": "u@example.com"}},
                                     {"type": "track", "userId": "u", "event": "Signed Up"}]})

    assert not Delivery.objects.exists()
    hook = JourneyRun.objects.get().executions.get(step_key="hook")
    assert hook.error == ("not called: 'mail' is a channel of kind Email; a webhook step needs a channel of kind "
                          "Webhook (Channels: add one)")
