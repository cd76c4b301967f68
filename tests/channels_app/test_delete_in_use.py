"""A message template or channel that a version in use names cannot be deleted (QA change #6):
the delete page says which workflow versions use it; one used only by drafts or retired versions
can be."""

from __future__ import annotations

import pytest
from django.urls import reverse

from channels_app.models import Channel, MessageTemplate
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.channels_app.factories import ChannelFactory, TemplateFactory
from tests.journeys.test_governance_fixtures import admin_form_data, units  # noqa: F401

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


@pytest.mark.parametrize("what", ["template", "channel"])
def test_a_template_or_channel_a_live_workflow_sends_keeps_its_name(admin_client, units, what):  # noqa: F811
    # given a template and a channel the live "Cart abandonment" names, and a template only a draft names
    sms = ChannelFactory(name="sms", kind="sms", provider="console")
    used, drafted = TemplateFactory(name="cart-discount-sms"), TemplateFactory(name="draft-only")
    _sending(units, "Cart abandonment", used.name, sms.name)
    _sending(units, "Experiment", drafted.name, sms.name, publish=False)
    obj = used if what == "template" else sms
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])

    # when ops renames it on its page
    response = admin_client.post(url, admin_form_data(admin_client.get(url), name="renamed", change_reason="tidy"))

    # then the name field says which versions name it, and nothing is saved
    assert response.status_code == 200
    [error] = response.context["adminform"].form.errors["name"]
    assert error.startswith(f"versions in use name this {what} {obj.name!r}: Cart abandonment v1 (live): step sms.")
    assert type(obj).objects.get(pk=obj.pk).name == obj.name
    # and a template only drafts name can be renamed
    url = reverse("admin:channels_app_messagetemplate_change", args=[drafted.pk])
    saved = admin_client.post(url, admin_form_data(admin_client.get(url), name="draft-renamed", change_reason="tidy"))
    assert saved.status_code == 302 and MessageTemplate.objects.get(pk=drafted.pk).name == "draft-renamed"


def test_the_service_refuses_the_rename_too(units):  # noqa: F811
    from django.core.exceptions import ValidationError

    from channels_app.services.channels import channel_save, channel_token

    sms = ChannelFactory(name="sms", kind="sms", provider="console")
    _sending(units, "Cart abandonment", TemplateFactory(name="t").name, sms.name)
    loaded = channel_token(channel=sms)
    sms.name = "text"
    with pytest.raises(ValidationError) as refused:
        channel_save(channel=sms, actor=None, reason="tidy", loaded=loaded)
    assert "Cart abandonment v1 (live): step sms" in refused.value.message_dict["name"][0]
    assert Channel.objects.get(pk=sms.pk).name == "sms"
