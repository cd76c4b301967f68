"""A change that relaxes a frequency cap or quiet hours releases the messages the old rule held
(QA caps #2), as resuming a pause does: they go through the send path again at once."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from channels_app.models import Channel, Delivery, FrequencyCap
from channels_app.services import message_send
from channels_app.services.channels import channel_token
from tests.channels_app.factories import CapFactory, ChannelFactory, CustomerFactory, TemplateFactory, topic

pytestmark = pytest.mark.django_db


@pytest.fixture
def mail():
    return ChannelFactory(name="mail", kind="email", provider="console")


@pytest.fixture
def ada():
    return CustomerFactory(external_id="ada", email="ada@example.com", phone="+15550001", timezone="UTC")


def send(channel, customer, key, on_commit) -> Delivery:
    with on_commit():
        delivery = message_send(customer=customer, template=TemplateFactory(topic=topic("product_updates")),
                                channel=channel, idempotency_key=key, context={})
    delivery.refresh_from_db()
    return delivery


def cap_form(cap: FrequencyCap, **changes) -> dict:
    form = {"name": cap.name, "channel": cap.channel_id or "", "topic": cap.topic_id or "", "limit": cap.limit,
            "window_s": cap.window_s, "action": cap.action, "enabled": "on", "change_reason": "campaign week"}
    form.update(changes)
    return {k: v for k, v in form.items() if v is not None}


@pytest.mark.parametrize("change", ["raised", "disabled", "deleted"])
def test_relaxing_a_cap_in_the_admin_sends_what_it_held_at_once(mail, ada, on_commit, admin_client, change):
    """Given a cap of 1 a day that deferred a customer's second email until tomorrow, when an operator
    raises it, disables it or deletes it in the admin, the email is sent at once."""
    cap = CapFactory(name="mail-1-day", channel=mail, limit=1, window_s=86400, action="defer")
    assert send(mail, ada, "1", on_commit).status == "sent"
    held = send(mail, ada, "2", on_commit)
    assert (held.status, held.reason) == ("deferred", "frequency_cap")
    assert held.next_attempt_at > timezone.now() + timedelta(hours=23)

    with on_commit():
        if change == "deleted":
            response = admin_client.post(reverse("admin:channels_app_frequencycap_delete", args=[cap.pk]),
                                          {"post": "yes", "change_reason": "campaign week"})
        else:
            form = cap_form(cap, limit=5) if change == "raised" else cap_form(cap, enabled=None)
            response = admin_client.post(reverse("admin:channels_app_frequencycap_change", args=[cap.pk]), form)
        assert response.status_code == 302

    held.refresh_from_db()
    assert (held.status, held.reason, held.error) == ("sent", "", "")


def test_a_shorter_window_holds_the_message_until_the_new_window_frees(mail, ada, on_commit, admin_client):
    """Given a cap of 1 a day holding an email until tomorrow, when its window becomes an hour, the email
    is held again (the rule still applies) until an hour after the first one, and says so."""
    cap = CapFactory(name="mail-1-day", channel=mail, limit=1, window_s=86400, action="defer")
    first = send(mail, ada, "1", on_commit)
    held = send(mail, ada, "2", on_commit)

    with on_commit():
        admin_client.post(reverse("admin:channels_app_frequencycap_change", args=[cap.pk]),
                          cap_form(cap, window_s=3600))

    held.refresh_from_db()
    assert (held.status, held.reason, held.error) == ("deferred", "frequency_cap", "cap mail-1-day: 1/1 in 3600s")
    assert held.next_attempt_at == first.sent_at + timedelta(seconds=3601)


def test_an_unrelated_change_leaves_other_caps_holds_alone(mail, ada, on_commit, admin_client):
    """A change to one cap does not release what another cap holds."""
    CapFactory(name="mail-1-day", channel=mail, limit=1, window_s=86400, action="defer")
    other = CapFactory(name="sms-1-day", channel=ChannelFactory(name="sms", kind="sms", provider="console"),
                       limit=1, window_s=86400, action="defer")
    send(mail, ada, "1", on_commit)
    held = send(mail, ada, "2", on_commit)
    before = held.updated_at

    with on_commit():
        admin_client.post(reverse("admin:channels_app_frequencycap_change", args=[other.pk]), cap_form(other, limit=3))

    held.refresh_from_db()
    assert (held.status, held.updated_at) == ("deferred", before)


def test_removing_quiet_hours_in_the_channel_admin_sends_what_they_held(mail, ada, on_commit, admin_client):
    """Given quiet hours that hold a customer's email for two more hours, when an operator removes them
    on the channel's page, the email is sent at once."""
    local = timezone.now()  # ada's clock is UTC
    mail.quiet_start, mail.quiet_end = (local - timedelta(hours=1)).time(), (local + timedelta(hours=2)).time()
    mail.save()
    held = send(mail, ada, "1", on_commit)
    assert (held.status, held.reason) == ("deferred", "quiet_hours")

    form = {"name": mail.name, "kind": mail.kind, "provider": mail.provider, "settings": json.dumps(mail.settings),
            "enabled": "on", "max_attempts": mail.max_attempts, "retry_base_s": mail.retry_base_s,
            "retry_max_s": mail.retry_max_s, "breaker_threshold": mail.breaker_threshold,
            "breaker_cooldown_s": mail.breaker_cooldown_s, "quiet_start": "", "quiet_end": "",
            "change_reason": "no quiet hours for mail", "loaded": channel_token(channel=Channel.objects.get(pk=mail.pk))}
    with on_commit():
        response = admin_client.post(reverse("admin:channels_app_channel_change", args=[mail.pk]), form)
        assert response.status_code == 302

    held.refresh_from_db()
    assert held.status == "sent"
