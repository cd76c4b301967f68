"""Channels configuration keeps who/when/why: every admin change form asks for a reason, the
reason and the user land on the history row (inline locale variants included), and actions
that change a channel say why too."""

from __future__ import annotations

from datetime import time

import pytest
from django.urls import reverse

from channels_app.models import Consent, ContentBlock, TemplateVariant
from tests.channels_app.factories import CapFactory, ChannelFactory, TemplateFactory, TopicFactory
from tests.factories import CustomerFactory
from tests.journeys.test_governance_fixtures import admin_form_data, assert_change_needs_a_reason

pytestmark = pytest.mark.django_db


def _consent():
    return Consent.objects.create(customer=CustomerFactory(), channel_kind="email", status="opted_in", source="web",
                                  updated_at="2026-01-01T00:00:00Z")


CASES = {
    "channel (provider settings, quiet hours)": (
        lambda: ChannelFactory(name="email-main", provider="console"),
        {"quiet_start": "22:00:00", "quiet_end": "07:00:00", "settings": '{"from_email": "news@shop.example"}'},
        lambda c: (c.quiet_start, c.settings) == (time(22), {"from_email": "news@shop.example"}),
    ),
    "frequency cap": (lambda: CapFactory(limit=3), {"limit": 2}, lambda c: c.limit == 2),
    "topic": (lambda: TopicFactory(slug="offers"), {"requires_opt_in": "on"}, lambda t: t.requires_opt_in),
    "consent edited by staff": (_consent, {"status": "opted_out"}, lambda c: c.status == "opted_out"),
    "message template": (lambda: TemplateFactory(), {"subject": "New subject"}, lambda t: t.subject == "New subject"),
    "content block": (lambda: ContentBlock.objects.create(name="offer", variants=[{"rule": "", "body": "Hi"}]),
                      {"description": "seasonal"}, lambda b: b.description == "seasonal"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_channels_config_change_needs_a_reason_and_keeps_who_and_why(admin_client, admin_user, case):
    make, changes, changed = CASES[case]
    saved = assert_change_needs_a_reason(admin_client, admin_user, make(), changes)
    assert changed(saved)


def test_locale_variants_saved_with_their_template_carry_the_same_reason(admin_client, admin_user):
    template = TemplateFactory(subject="Hello")
    variant = TemplateVariant.objects.create(template=template, locale="fr", subject="Bonjour")
    url = reverse("admin:channels_app_messagetemplate_change", args=[template.pk])
    data = admin_form_data(admin_client.get(url), change_reason="French copy reviewed by legal")
    data["variants-0-subject"] = "Bonjour !"

    assert admin_client.post(url, data).status_code == 302

    row = variant.history.latest("history_date")
    assert (row.subject, row.history_user, row.history_change_reason) == (
        "Bonjour !", admin_user, "French copy reviewed by legal")


def test_adding_a_channel_without_a_reason_says_what_to_fix(admin_client):
    from channels_app.models import Channel

    response = admin_client.post(reverse("admin:channels_app_channel_add"), {
        "name": "push", "kind": "push", "provider": "console", "settings": "{}", "enabled": "on", "max_attempts": 5,
        "retry_base_s": 30, "retry_max_s": 3600, "breaker_threshold": 5, "breaker_cooldown_s": 60})

    assert response.status_code == 200
    assert "say why you are making this change" in response.content.decode()
    assert not Channel.objects.filter(name="push").exists()


def test_pausing_a_channel_from_the_list_needs_a_reason_and_records_it(admin_client, admin_user):
    channel = ChannelFactory(name="sms-main", kind="sms", provider="console")
    url = reverse("admin:channels_app_channel_changelist")

    refused = admin_client.post(url, {"action": "pause", "_selected_action": [channel.pk], "reason": ""}, follow=True)
    channel.refresh_from_db()
    assert not channel.paused and "type a reason" in refused.content.decode()

    admin_client.post(url, {"action": "pause", "_selected_action": [channel.pk], "reason": "vendor outage"})
    channel.refresh_from_db()
    row = channel.history.latest("history_date")
    assert channel.paused and (row.history_user, row.history_change_reason) == (admin_user, "vendor outage")
