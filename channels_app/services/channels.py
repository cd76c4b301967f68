"""Channels as operators change them: every save carries its history reason, and a save that
lifts a pause or changes quiet hours releases what they held at once (after the commit), not at
its next recheck or at the end of the old quiet hours."""

from __future__ import annotations

from django.db import transaction

from channels_app.models import Channel
from channels_app.services.dispatch import deliveries_release_on_resume
from journeys.services.governance import history_stamp


def channel_save(*, channel: Channel, actor, reason: str, update_fields: list[str] | None = None) -> Channel:
    """Save a channel with who and why. A pause is lifted when the stored row was paused and this
    one is not, whatever the path (its form, a revert from its history, the Resume action). Quiet
    hours changed (or removed) release what the old ones held: it is looked at again now."""
    stored = Channel.objects.filter(pk=channel.pk).values("paused", "quiet_start", "quiet_end").first() \
        if channel.pk is not None else None
    history_stamp(channel, actor=actor, reason=reason).save(update_fields=update_fields)
    if stored is None:
        return channel
    if stored["paused"] and not channel.paused:
        transaction.on_commit(lambda: deliveries_release_on_resume(scope="channel", key=str(channel.pk)))
    if (stored["quiet_start"], stored["quiet_end"]) != (channel.quiet_start, channel.quiet_end) and (
            update_fields is None or {"quiet_start", "quiet_end"} & set(update_fields)):
        transaction.on_commit(lambda: deliveries_release_on_resume(scope="quiet_hours", key=str(channel.pk)))
    return channel


def channel_pause_set(*, channel: Channel, paused: bool, actor, reason: str) -> Channel:
    """Pause a channel (its sends wait, deferred: never lost) or resume it."""
    if channel.paused != paused:
        channel.paused = paused
        channel_save(channel=channel, actor=actor, reason=reason, update_fields=["paused"])
    return channel
