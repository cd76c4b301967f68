"""Frequency caps as operators change them: every save and delete carries its history reason,
and a change to a cap's rule releases the messages it held (after the commit), as lifting a
pause does: they go through the send path again, where today's caps decide (sent now, or held
again until the moment the rule now gives), instead of waiting out a window the old rule set."""

from __future__ import annotations

from django.db import transaction

from channels_app.models import FrequencyCap
from channels_app.services.dispatch import deliveries_release_on_resume
from journeys.services.governance import history_stamp

# What a cap's holds were computed from: a change to any of them may free what it held.
CAP_RULE_FIELDS = ("name", "channel_id", "topic_id", "limit", "window_s", "action", "enabled")


def _release(name: str) -> None:
    transaction.on_commit(lambda: deliveries_release_on_resume(scope="cap", key=name))


def frequency_cap_save(*, cap: FrequencyCap, actor, reason: str) -> FrequencyCap:
    """Save a cap with who and why. When its rule changed (raised, disabled, a longer window...),
    the messages it deferred are looked at again now (one UPDATE, then the normal dispatch). The cap
    row is locked first: a claim that read it (FOR SHARE) commits its holds before this save goes
    on, so the release after the commit sees them."""
    with transaction.atomic():
        stored = FrequencyCap.objects.select_for_update().filter(pk=cap.pk).first() if cap.pk is not None else None
        history_stamp(cap, actor=actor, reason=reason).save()
        if stored is not None and any(getattr(stored, f) != getattr(cap, f) for f in CAP_RULE_FIELDS):
            _release(stored.name)
    return cap


def frequency_cap_delete(*, cap: FrequencyCap, actor, reason: str) -> None:
    """Delete a cap with who and why; the messages it deferred are looked at again now (the DELETE
    waits for the claims that read the cap FOR SHARE, so the release sees their holds)."""
    name = cap.name
    history_stamp(cap, actor=actor, reason=reason).delete()
    _release(name)
