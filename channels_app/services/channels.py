"""Channels as operators change them: every save carries its history reason, and a save that
lifts a pause releases what the pause held at once (after the commit), not at its next recheck."""

from __future__ import annotations

from django.db import transaction

from channels_app.models import Channel
from channels_app.services.dispatch import deliveries_release_on_resume
from journeys.services.governance import history_stamp


def channel_save(*, channel: Channel, actor, reason: str, update_fields: list[str] | None = None) -> Channel:
    """Save a channel with who and why. A pause is lifted when the stored row was paused and this
    one is not, whatever the path (its form, a revert from its history, the Resume action)."""
    was_paused = channel.pk is not None and Channel.objects.filter(pk=channel.pk, paused=True).exists()
    history_stamp(channel, actor=actor, reason=reason).save(update_fields=update_fields)
    if was_paused and not channel.paused:
        transaction.on_commit(lambda: deliveries_release_on_resume(scope="channel", key=str(channel.pk)))
    return channel


def channel_pause_set(*, channel: Channel, paused: bool, actor, reason: str) -> Channel:
    """Pause a channel (its sends wait, deferred: never lost) or resume it."""
    if channel.paused != paused:
        channel.paused = paused
        channel_save(channel=channel, actor=actor, reason=reason, update_fields=["paused"])
    return channel
