"""Channels as operators change them: every save carries its history reason and is made only over
the channel as its page showed it; a pause is set and lifted only by `channel_pause_set` (the
outage tool, in the audit log like a workflow's pause), which releases what the pause held at
once (after the commit), not at its next recheck; a save that changes quiet hours releases what
the old ones held at once too, not at the end of the old quiet hours."""

from __future__ import annotations

from django.db import transaction

from channels_app.models import Channel
from channels_app.services.dispatch import deliveries_release_on_resume
from journeys.errors import DraftChanged, PermissionDenied
from journeys.services.governance import audit_record, history_stamp, require_reason
from journeys.services.references import config_rename_check
from journeys.services.stale_edits import DELETED_SINCE, edit_refuse_stale, fields_token

# What a channel's page shows (its token covers them all, the pause included) and what it writes.
CHANNEL_FIELDS = tuple(f.name for f in Channel._meta.concrete_fields if not f.primary_key)
CHANNEL_SAVED_FIELDS = tuple(f for f in CHANNEL_FIELDS if f != "paused")


def channel_token(*, channel: Channel) -> str:
    """The channel's page as it shows it, for `channel_save(loaded=...)`."""
    return fields_token(channel, CHANNEL_FIELDS)


@transaction.atomic
def channel_save(*, channel: Channel, actor, reason: str, loaded: str | None = None) -> Channel:
    """Save a channel edited on its page (or reverted from its history) with who and why. Its
    pause is not written (a page opened before a pause would resume the channel and release what
    the outage held): `channel_pause_set` does that. `loaded` (`channel_token` of the page): a
    channel changed since the page was opened (settings, a pause...) is not saved over
    (`DraftChanged`, naming who and when)."""
    if channel.pk is None:
        history_stamp(channel, actor=actor, reason=reason).save()
        return channel
    current = Channel.objects.select_for_update().filter(pk=channel.pk).first()
    if current is None:
        raise DraftChanged(DELETED_SINCE.format(what=f"channel {channel.name}"), code="changed_meanwhile")
    edit_refuse_stale(loaded=loaded, now=channel_token(channel=current), what=f"channel {current.name}",
                      history=current.history.all(), token_of=lambda row: channel_token(channel=row))
    config_rename_check(what="channel", old=current.name, new=channel.name)
    channel.paused = current.paused
    history_stamp(channel, actor=actor, reason=reason).save(update_fields=CHANNEL_SAVED_FIELDS)
    if (current.quiet_start, current.quiet_end) != (channel.quiet_start, channel.quiet_end):
        # what the old quiet hours held is looked at again now
        transaction.on_commit(lambda: deliveries_release_on_resume(scope="quiet_hours", key=str(channel.pk)))
    return channel


@transaction.atomic
def channel_pause_set(*, channel: Channel, paused: bool, actor, reason: str) -> Channel:
    """Pause a channel (its sends wait, deferred: never lost) or resume it (what it held is
    released after the commit). Recorded in the audit log with who and why."""
    if actor is not None and not actor.has_perm("channels_app.change_channel"):
        raise PermissionDenied(f"{actor} may not pause or resume channels")
    reason = require_reason(actor, reason)
    channel = Channel.objects.select_for_update().get(pk=channel.pk)
    if channel.paused == paused:
        return channel
    channel.paused = paused
    history_stamp(channel, actor=actor, reason=reason or ("paused" if paused else "resumed")).save(
        update_fields=["paused"])
    audit_record(action="channel_paused" if paused else "channel_resumed", actor=actor, reason=reason,
                 data={"channel": channel.name, "channel_id": channel.pk})
    if not paused:
        transaction.on_commit(lambda: deliveries_release_on_resume(scope="channel", key=str(channel.pk)))
    return channel
