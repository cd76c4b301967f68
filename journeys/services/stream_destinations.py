"""Ops configure the outbound event stream's destinations: create and change (URL and event
types checked), rotate the signing secret, pause and resume; each with who and why in the
history. Recording and sending are in journeys.services.stream, which the engine calls; this
layer sits above governance, which the engine must not reach through the stream."""

from __future__ import annotations

import secrets
from typing import Any

from django.db import transaction
from django.utils import timezone

from journeys.models import StreamDestination
from journeys.services.governance import history_stamp, require_model_perm, require_reason
from journeys.services.stream import deliver_later, destination_clean, destination_secret, stream_destinations_reset


@transaction.atomic
def destination_save(*, destination: StreamDestination, actor: Any = None, reason: str = "") -> str | None:
    """Create or change a destination (URL and types checked); returns the signing secret when
    it was created (shown once), else None."""
    creating = destination.pk is None
    require_model_perm(actor, "add_streamdestination" if creating else "change_streamdestination",
                   "configure stream destinations")
    reason = require_reason(actor, reason) or ("destination created" if creating else "destination changed")
    destination_clean(destination)
    if creating:
        destination.secret_salt = secrets.token_hex(16)
    history_stamp(destination, actor=actor, reason=reason)
    destination.save()
    transaction.on_commit(stream_destinations_reset)
    stream_destinations_reset()
    return destination_secret(destination) if creating else None


@transaction.atomic
def destination_rotate_secret(*, destination: StreamDestination, actor: Any = None, reason: str = "") -> str:
    """A new signing secret from now on; returns it (shown once). For STREAM["ROTATION_OVERLAP_S"]
    (a day) requests carry a signature with the old one too, so receivers can switch when they
    like; after that the old one stops verifying. Rotating again drops the one before."""
    require_model_perm(actor, "change_streamdestination", "rotate stream secrets")
    destination.previous_secret_salt = destination.secret_salt
    destination.secret_salt = secrets.token_hex(16)
    destination.secret_rotated_at = timezone.now()
    history_stamp(destination, actor=actor, reason=require_reason(actor, reason) or "secret rotated")
    destination.save(update_fields=["secret_salt", "previous_secret_salt", "secret_rotated_at", "updated_at"])
    return destination_secret(destination)


@transaction.atomic
def destination_resume(*, destination: StreamDestination, actor: Any = None, reason: str = "") -> StreamDestination:
    """Start sending to a paused destination again, now (its backlog goes out in order)."""
    require_model_perm(actor, "change_streamdestination", "resume stream destinations")
    destination = StreamDestination.objects.select_for_update().get(pk=destination.pk)
    destination.paused_at, destination.pause_reason = None, ""
    destination.consecutive_failures, destination.next_attempt_at = 0, None
    history_stamp(destination, actor=actor, reason=require_reason(actor, reason) or "resumed")
    destination.save()
    transaction.on_commit(lambda: deliver_later(destination.pk))
    return destination


@transaction.atomic
def destination_pause(*, destination: StreamDestination, actor: Any = None, reason: str = "") -> StreamDestination:
    """Hold a destination's deliveries (events keep being recorded for it)."""
    require_model_perm(actor, "change_streamdestination", "pause stream destinations")
    reason = require_reason(actor, reason) or "paused"
    destination = StreamDestination.objects.select_for_update().get(pk=destination.pk)
    destination.paused_at, destination.pause_reason = timezone.now(), f"paused by ops: {reason}"[:255]
    history_stamp(destination, actor=actor, reason=reason)
    destination.save()
    return destination
