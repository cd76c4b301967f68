"""Templates and channels edited by several operators (QA change #3, #4): a save from a page
opened before someone else's save is refused, naming who and when; a channel page never resumes
a channel paused while it was open, and pausing and resuming are in the audit log."""

from __future__ import annotations

from datetime import time

import pytest
from django.test import Client
from django.urls import reverse

from channels_app.models import Channel, MessageTemplate, TemplateVariant
from journeys.models import AuditEntry
from tests.channels_app.factories import ChannelFactory, TemplateFactory
from tests.factories import UserFactory
from tests.journeys.test_governance_fixtures import admin_form_data

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_ops(db):
    """Two operators, each signed in on their own browser."""
    clients = []
    for name in ("ops", "ops2"):
        UserFactory(username=name, is_staff=True, is_superuser=True)
        client = Client()
        assert client.login(username=name, password="pw")
        clients.append(client)
    return clients


def _errors(response) -> str:
    return " ".join(response.context["adminform"].form.non_field_errors())


def test_a_template_page_opened_before_another_save_is_refused(two_ops):
    # given a template both operators opened
    ops, ops2 = two_ops
    template = TemplateFactory(name="cart-reminder", subject="Old subject", body="Old body")
    url = reverse("admin:channels_app_messagetemplate_change", args=[template.pk])
    first, second = ops.get(url), ops2.get(url)

    # when ops changes the subject, then ops2 changes the body on the page opened before
    saved = ops.post(url, admin_form_data(first, subject="New subject", change_reason="new campaign"))
    refused = ops2.post(url, admin_form_data(second, body="New body", change_reason="typo"))

    # then the subject stays; ops2's page comes back with the body typed, saying who changed it and to reload
    assert saved.status_code == 302, saved.content[:2000]
    assert refused.status_code == 200
    assert "template cart-reminder was changed by ops at " in _errors(refused)
    assert "Reload the page" in _errors(refused)
    assert refused.context["adminform"].form["body"].value() == "New body"
    template.refresh_from_db()
    assert (template.subject, template.body) == ("New subject", "Old body")


def test_a_variant_changed_since_the_page_was_opened_refuses_the_save_too(two_ops):
    # given a template with a German variant, whose page both operators opened
    ops, ops2 = two_ops
    template = TemplateFactory(name="cart-reminder", subject="Subject")
    variant = TemplateVariant.objects.create(template=template, locale="de", subject="Dein Warenkorb")
    url = reverse("admin:channels_app_messagetemplate_change", args=[template.pk])
    first, second = ops.get(url), ops2.get(url)

    # when ops corrects the German subject, then ops2 saves the page opened before with a new subject
    ops.post(url, admin_form_data(first, **{"variants-0-subject": "Dein Warenkorb wartet"}, change_reason="de"))
    refused = ops2.post(url, admin_form_data(second, subject="Other", change_reason="subject"))

    # then the German correction stands and nothing of ops2's page is saved
    assert refused.status_code == 200 and "was changed by ops at " in _errors(refused)
    variant.refresh_from_db()
    assert variant.subject == "Dein Warenkorb wartet"
    assert MessageTemplate.objects.get(pk=template.pk).subject == "Subject"


def _pause(client, channel, reason="provider outage"):
    return client.post(reverse("admin:channels_app_channel_changelist"),
                       {"action": "pause", "_selected_action": [channel.pk], "reason": reason}, follow=True)


def test_a_channel_page_opened_before_a_pause_does_not_resume_it(two_ops, django_capture_on_commit_callbacks):
    # given the email channel's page, opened by ops2 to change its quiet hours
    ops, ops2 = two_ops
    email = ChannelFactory(name="email", kind="email", provider="console")
    url = reverse("admin:channels_app_channel_change", args=[email.pk])
    page = ops2.get(url)

    # when ops pauses the channel for an outage, then ops2 saves the page opened before
    _pause(ops, email)
    assert Channel.objects.get(pk=email.pk).paused
    with django_capture_on_commit_callbacks(execute=False) as released:
        refused = ops2.post(url, admin_form_data(page, quiet_start="22:00:00", quiet_end="07:00:00",
                                                 change_reason="quiet hours"))

    # then the save is refused, saying who paused it; the channel stays paused, nothing is released
    assert refused.status_code == 200
    assert "channel email was changed by ops at " in _errors(refused)
    email.refresh_from_db()
    assert email.paused and email.quiet_start is None
    assert released == []

    # and from the page opened again, the quiet hours are saved and the channel stays paused
    again = ops2.post(url, admin_form_data(ops2.get(url), quiet_start="22:00:00", quiet_end="07:00:00",
                                           change_reason="quiet hours"))
    assert again.status_code == 302, again.content[:2000]
    email.refresh_from_db()
    assert email.paused and email.quiet_start == time(22)


def test_a_channel_page_cannot_pause_or_resume_it(two_ops):
    # given a paused channel's page
    ops, _ = two_ops
    email = ChannelFactory(name="email", kind="email", provider="console", paused=True)
    url = reverse("admin:channels_app_channel_change", args=[email.pk])

    # when the page is posted without the paused box (or with it, on a running channel)
    saved = ops.post(url, {**admin_form_data(ops.get(url), change_reason="forged"), "paused": ""})

    # then the rest is saved and the pause is as it was: the actions pause and resume
    assert saved.status_code == 302
    assert Channel.objects.get(pk=email.pk).paused


def test_pausing_and_resuming_a_channel_is_in_the_audit_log(two_ops):
    ops, _ = two_ops
    email = ChannelFactory(name="email", kind="email", provider="console")

    _pause(ops, email, "provider outage")
    ops.post(reverse("admin:channels_app_channel_changelist"),
             {"action": "resume", "_selected_action": [email.pk], "reason": "provider back"})

    entries = AuditEntry.objects.filter(action__startswith="channel_").order_by("id")
    assert [(e.action, e.actor.username, e.reason, e.data["channel"]) for e in entries] == [
        ("channel_paused", "ops", "provider outage", "email"), ("channel_resumed", "ops", "provider back", "email")]


def test_reverting_a_channel_to_before_its_pause_keeps_the_pause(two_ops):
    # given a channel paused after its quiet hours were set
    ops, _ = two_ops
    email = ChannelFactory(name="email", kind="email", provider="console")
    url = reverse("admin:channels_app_channel_change", args=[email.pk])
    ops.post(url, admin_form_data(ops.get(url), quiet_start="21:00:00", quiet_end="08:00:00", change_reason="quiet"))
    before = Channel.history.filter(id=email.pk).order_by("-history_date").first()
    _pause(ops, email)

    # when an operator reverts it to the version from before the pause
    revert = reverse("admin:channels_app_channel_simple_history", args=[email.pk, before.history_id])
    page = ops.get(revert)
    shown = type("HistoryPage", (), {"context": {"adminform": page.context["adminform"], "inline_admin_formsets": []}})
    response = ops.post(revert, admin_form_data(shown, change_reason="back to before"))

    # then the settings of that version are back and the channel stays paused (the Resume action resumes it)
    assert response.status_code == 302, response.content[:2000]
    email.refresh_from_db()
    assert email.paused and email.quiet_start == time(21)
