"""The channels app's part of the history retention (journeys.services.history_retention):
messages go with their runs, messages sent outside any run (API, transactional, test sends) go
by age, inbound messages' keys (a retried webhook's) go by age, and nothing a frequency cap
still counts is deleted."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, Max, OuterRef, Q, QuerySet

from channels_app.choices import DeliveryStatus
from channels_app.models import Delivery, FrequencyCap, InboundMessage

# A message still on its way is never deleted, whatever its age.
UNFINISHED = (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED, DeliveryStatus.SENDING)


def cap_window_floor() -> timedelta:
    """HISTORY_FLOORS entry: the longest enabled frequency cap's window (the caps count the
    messages sent within it, so none of those may go)."""
    longest = FrequencyCap.objects.filter(enabled=True).aggregate(s=Max("window_s"))["s"]
    return timedelta(seconds=longest or 0)


def runs_with_unsent_messages() -> Q:
    """RUN_HOLDS entry: a run with a message not yet sent (held by a paused channel, safe mode or
    its send time) stays, so that message is sent, not deleted (run_id index)."""
    return Q(Exists(Delivery.objects.filter(run_id=OuterRef("pk"), status__in=UNFINISHED)))


def run_deliveries_delete(run_ids: list[int]) -> dict:
    """RUN_DEPENDENTS entry: the messages of these runs and their attempts (run_id index)."""
    deleted, by_model = Delivery.objects.filter(run_id__in=run_ids).delete()
    return {"deliveries": by_model.get(Delivery._meta.label, 0)}


def standalone_deliveries_prune(cutoff: datetime, deadline: float, batch: int) -> dict:
    """HISTORY_PRUNERS entry: finished messages sent outside any run, created before the cutoff
    (delivery_standalone_idx), `batch` at a time, each batch its own transaction."""
    rows = Delivery.objects.filter(run_id__isnull=True, created_at__lt=cutoff).exclude(status__in=UNFINISHED)
    return {"standalone_deliveries": _oldest_delete(rows.order_by("created_at"), deadline, batch)}


def _oldest_delete(rows: QuerySet, deadline: float, batch: int) -> int:
    """Delete `rows` in their order (oldest first), `batch` at a time, each batch its own
    transaction, until none is left or the deadline passes. Returns how many went."""
    deleted = 0
    while time.monotonic() < deadline:
        ids = list(rows.values_list("pk", flat=True)[:batch])
        if ids:
            with transaction.atomic():
                rows.model.objects.filter(pk__in=ids).delete()
        deleted += len(ids)
        if len(ids) < batch:
            break
    return deleted


def inbound_messages_prune(cutoff: datetime, deadline: float, batch: int) -> dict:
    """HISTORY_PRUNERS entry: the keys of inbound messages received before the cutoff (a provider
    retries its webhook within hours), `batch` at a time (received_at index)."""
    rows = InboundMessage.objects.filter(received_at__lt=cutoff).order_by("received_at")
    return {"inbound_messages": _oldest_delete(rows, deadline, batch)}
