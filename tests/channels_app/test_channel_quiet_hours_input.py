"""Quiet hours half filled in (QA builder report, defect 3): a start without an end, or the same
time at both ends, was saved and meant no quiet hours without a word. The Channel model's clean()
refuses them naming the field, so the channel's admin page (and any full_clean) says so."""

from __future__ import annotations

from datetime import time

import pytest
from django.core.exceptions import ValidationError

from channels_app.models import Channel
from channels_app.services.channels import channel_token
from tests.channels_app.factories import ChannelFactory
from tests.channels_app.test_admin import channel_form

pytestmark = pytest.mark.django_db


def _shown(channel: Channel) -> str:
    """What the channel's page carries of the stored channel (a save over another's is refused)."""
    return channel_token(channel=Channel.objects.get(pk=channel.pk))


@pytest.mark.parametrize("start, end, field, message", [
    ("21:00", "", "quiet_end", "is required when the quiet start is set: quiet hours need both ends "
                               "(leave both empty for none)"),
    ("", "08:00", "quiet_start", "is required when the quiet end is set: quiet hours need both ends "
                                 "(leave both empty for none)"),
    ("08:00", "08:00", "quiet_end", "must differ from the quiet start (08:00): the same time at both ends holds "
                                    "nothing (leave both empty for none)"),
])
def test_half_filled_quiet_hours_are_refused_on_the_channel_page_naming_the_field(admin_client, start, end, field,
                                                                                  message):
    channel = ChannelFactory(name="sms", kind="sms", provider="twilio_sms", settings={"account_sid": "AC1"})
    url = f"/admin/channels_app/channel/{channel.pk}/change/"

    response = admin_client.post(url, channel_form(quiet_start=start, quiet_end=end, change_reason="quiet nights",
                                                   loaded=_shown(channel)))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors[field] == [message]
    assert Channel.objects.values_list("quiet_start", "quiet_end").get(pk=channel.pk) == (None, None)


def test_both_ends_or_none_are_saved(admin_client):
    channel = ChannelFactory(name="sms", kind="sms", provider="twilio_sms", settings={"account_sid": "AC1"})
    url = f"/admin/channels_app/channel/{channel.pk}/change/"

    assert admin_client.post(url, channel_form(quiet_start="21:00", quiet_end="08:00",
                                               loaded=_shown(channel))).status_code == 302
    assert Channel.objects.values_list("quiet_start", "quiet_end").get(pk=channel.pk) == (time(21), time(8))
    assert admin_client.post(url, channel_form(quiet_start="", quiet_end="", loaded=_shown(channel))).status_code == 302
    assert Channel.objects.values_list("quiet_start", "quiet_end").get(pk=channel.pk) == (None, None)


def test_the_models_full_clean_refuses_them_too():
    channel = Channel(name="push", kind="push", provider="console", quiet_start=time(22))

    with pytest.raises(ValidationError) as refused:
        channel.full_clean()

    assert list(refused.value.message_dict) == ["quiet_end"]
