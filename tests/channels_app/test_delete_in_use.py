"""A message template or channel that a version in use names cannot be deleted (QA change #6):
the delete page says which workflow versions use it; one used only by drafts or retired versions
can be."""

from __future__ import annotations

import pytest
from django.urls import reverse

from channels_app.models import Channel, MessageTemplate
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.channels_app.factories import ChannelFactory, TemplateFactory
from tests.journeys.test_governance_fixtures import units  # noqa: F401

pytestmark = pytest.mark.django_db


def _sending(units, name, template, channel, publish=True):  # noqa: F811
    workflow = workflow_create(name=name, business_unit=units["retention"])
    version = version_build(workflow=workflow, definition={
        "trigger_event": "Cart Abandoned",
        "steps": [{"key": "sms", "kind": "send_message", "config": {"channel": channel, "template": template}}]})
    if publish:
        version_publish(version=version, reason="go")
    return version


def _delete(client, obj, reason="cleanup"):
    opts = obj._meta
    return client.post(reverse(f"admin:{opts.app_label}_{opts.model_name}_delete", args=[obj.pk]),
                       {"post": "yes", "change_reason": reason})


def test_a_template_a_live_workflow_sends_is_not_deleted_and_the_page_says_where(admin_client, units):  # noqa: F811
    # given a template the live "Cart abandonment" sends, and one only a draft names
    sms = ChannelFactory(name="sms", kind="sms")
    used, drafted = TemplateFactory(name="cart-discount-sms"), TemplateFactory(name="draft-only")
    _sending(units, "Cart abandonment", used.name, sms.name)
    _sending(units, "Experiment", drafted.name, sms.name, publish=False)

    # when ops opens the delete page of the used one and confirms anyway
    page = admin_client.get(reverse("admin:channels_app_messagetemplate_delete", args=[used.pk])).content.decode()
    refused = _delete(admin_client, used)

    # then the page names the live version and its step, and the template stays
    assert "cannot be deleted" in page and "Cart abandonment v1 (live): step sms" in page
    assert refused.status_code == 200 and MessageTemplate.objects.filter(pk=used.pk).exists()

    # and "Delete selected" refuses it too, while the template only a draft uses can go
    changelist = reverse("admin:channels_app_messagetemplate_changelist")
    admin_client.post(changelist, {"action": "delete_selected", "_selected_action": [used.pk], "post": "yes",
                                   "change_reason": "cleanup"})
    assert MessageTemplate.objects.filter(pk=used.pk).exists()
    assert _delete(admin_client, drafted).status_code == 302
    assert not MessageTemplate.objects.filter(pk=drafted.pk).exists()


def test_a_channel_a_live_workflow_sends_on_is_not_deleted(admin_client, units):  # noqa: F811
    sms = ChannelFactory(name="sms", kind="sms")
    _sending(units, "Cart abandonment", TemplateFactory(name="t").name, sms.name)

    page = admin_client.get(reverse("admin:channels_app_channel_delete", args=[sms.pk])).content.decode()
    refused = _delete(admin_client, sms)

    assert "Cart abandonment v1 (live): step sms" in page
    assert refused.status_code == 200 and Channel.objects.filter(pk=sms.pk).exists()
