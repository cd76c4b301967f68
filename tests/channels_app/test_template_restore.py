"""Restoring templates from their history (QA change #7, #12): a deleted template is restored by
people who may add templates, never answered with a bare 403; where a deleted object cannot be
restored the page says why; the restore page says that locale variants are not restored."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from channels_app.models import Channel, MessageTemplate, TemplateVariant
from tests.channels_app.factories import ChannelFactory, TemplateFactory
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _operator(*codenames):
    user = UserFactory(username="ops", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="channels_app", codename__in=codenames))
    client = Client()
    assert client.login(username="ops", password="pw")
    return client


def _history_form(page) -> dict:
    form = page.context["adminform"].form
    data = {name: form[name].value() for name in form.fields}
    return {k: ("" if v is None else v) for k, v in data.items()}


def _deleted(obj, client):
    opts = obj._meta
    client.post(reverse(f"admin:{opts.app_label}_{opts.model_name}_delete", args=[obj.pk]),
                {"post": "yes", "change_reason": "cleanup"})
    assert not type(obj).objects.filter(pk=obj.pk).exists()
    return type(obj).history.filter(id=obj.pk, history_type="+").get()


def _said(response) -> str:
    return " ".join(str(m) for m in response.context["messages"])


def test_a_deleted_template_is_restored_from_its_history_by_who_may_add_templates(db):
    # given an operator who may add, change and delete templates, and a template they deleted
    client = _operator("add_messagetemplate", "change_messagetemplate", "delete_messagetemplate",
                       "view_messagetemplate")
    template = TemplateFactory(name="anniversary-push", subject="Happy anniversary")
    row = _deleted(template, client)
    url = reverse("admin:channels_app_messagetemplate_simple_history", args=[template.pk, row.history_id])

    # when they open its history row and press Revert, saying why
    page = client.get(url)
    restored = client.post(url, {**_history_form(page), "change_reason": "deleted by mistake"})

    # then the page said what a restore brings back, and the template is back, recorded with who and why
    assert page.status_code == 200 and "Its locale variants were deleted with it and are not restored" in _said(page)
    assert restored.status_code == 302, restored.content[:2000]
    back = MessageTemplate.objects.get(pk=template.pk)
    assert (back.name, back.subject) == ("anniversary-push", "Happy anniversary")
    latest = back.history.latest("history_date")
    assert (latest.history_user.username, latest.history_change_reason) == ("ops", "deleted by mistake")


def test_without_the_right_to_add_templates_the_page_says_why_there_is_no_revert(db):
    admin = _operator("add_messagetemplate", "delete_messagetemplate", "view_messagetemplate")
    template = TemplateFactory(name="gone")
    row = _deleted(template, admin)
    viewer = UserFactory(username="viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_messagetemplate"))
    client = Client()
    client.login(username="viewer", password="pw")
    url = reverse("admin:channels_app_messagetemplate_simple_history", args=[template.pk, row.history_id])

    page = client.get(url)
    forged = client.post(url, {"name": "gone", "body": "x", "change_reason": "try"}, follow=True)

    assert page.status_code == 200 and "cannot be restored from here" in _said(page)
    assert forged.status_code == 200 and "cannot be restored from here" in _said(forged)
    assert not MessageTemplate.objects.filter(pk=template.pk).exists()


def test_a_deleted_channel_history_says_why_there_is_no_revert_instead_of_403(db):
    client = _operator("add_channel", "change_channel", "delete_channel", "view_channel")
    channel = ChannelFactory(name="old-sms", kind="sms")
    row = _deleted(channel, client)
    url = reverse("admin:channels_app_channel_simple_history", args=[channel.pk, row.history_id])

    forged = client.post(url, {"name": "old-sms", "change_reason": "try"}, follow=True)

    assert forged.status_code == 200 and "This channel was deleted" in _said(forged)
    assert not Channel.objects.filter(pk=channel.pk).exists()


def test_the_restore_page_of_a_template_says_its_variants_are_not_restored(db):
    client = _operator("add_messagetemplate", "change_messagetemplate", "view_messagetemplate")
    template = TemplateFactory(name="cart-reminder")
    TemplateVariant.objects.create(template=template, locale="de", subject="Dein Warenkorb")
    row = template.history.latest("history_date")

    page = client.get(reverse("admin:channels_app_messagetemplate_simple_history", args=[template.pk, row.history_id]))

    assert "Its locale variants are not restored: they stay as they are now (its variants now: de)" in _said(page)
