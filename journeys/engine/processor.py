"""Turns stored events into journey progress."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from journeys.choices import EventStatus
from journeys.models import Event

logger = logging.getLogger(__name__)


def events_process(*, event_ids: list[int]) -> int:
    """Process the given events that are still pending; returns how many were processed."""
    done = 0
    for event in Event.objects.filter(pk__in=event_ids, status=EventStatus.PENDING).order_by("timestamp", "id"):
        with transaction.atomic():
            Event.objects.filter(pk=event.pk).update(status=EventStatus.PROCESSED, processed_at=timezone.now())
        done += 1
    return done


def events_sweep(*, older_than_s: int = 30, limit: int = 2000) -> int:
    """Find events that were stored but never processed (lost task, crashed worker)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    ids = list(
        Event.objects.filter(status=EventStatus.PENDING, received_at__lte=cutoff)
        .order_by("received_at")
        .values_list("id", flat=True)[:limit]
    )
    return events_process(event_ids=ids) if ids else 0
