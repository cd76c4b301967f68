from __future__ import annotations

from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords

from journeys.choices import QuarantineReason, QuarantineStatus
from journeys.models.base import Timestamped


class QuarantinedEvent(Timestamped):
    """An event the API refused while storing the rest of its request: kept as it was sent, with
    the field and the reason, until ops fix and replay it or discard it (with a reason).

    `payload` is JSON text, not a JSON column: what was wrong with the event (a NUL character,
    a lone surrogate, a number out of range, deep nesting) may be exactly what a JSON column
    cannot hold. `defaults` holds the batch-level context/integrations/sentAt it inherits.
    """

    source = models.ForeignKey("journeys.Source", on_delete=models.PROTECT, related_name="quarantined")
    status = models.CharField(max_length=12, choices=QuarantineStatus.choices, default=QuarantineStatus.QUARANTINED)
    code = models.CharField("reason", max_length=16, choices=QuarantineReason.choices)
    field = models.CharField(max_length=300, blank=True, help_text="the field at fault, as the API named it")
    message = models.TextField(help_text="what is wrong with it")
    payload = models.TextField(help_text="the event as the client sent it (JSON)")
    defaults = models.TextField(blank=True, help_text="batch-level context, integrations and sentAt it inherits (JSON)")
    endpoint_type = models.CharField(max_length=16, blank=True, help_text="the type fixed by the endpoint (/v1/track...)")
    message_id = models.CharField(max_length=255, blank=True)
    batch_index = models.PositiveIntegerField(null=True, blank=True)
    digest = models.CharField(max_length=64, editable=False, help_text="of source, payload and defaults: a resent batch is kept once")
    received_at = models.DateTimeField()
    ip = models.GenericIPAddressField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolution = models.TextField(blank=True, help_text="why it was replayed or discarded")
    event = models.ForeignKey(
        "journeys.Event", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="the event stored by the replay",
    )
    history = HistoricalRecords()

    class Meta:
        verbose_name = "quarantined event"
        ordering = ["-received_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["source", "digest"], name="quarantine_source_digest")]
        indexes = [
            models.Index(fields=["status", "received_at"], name="quarantine_status_idx"),
            models.Index(fields=["source", "status", "code"], name="quarantine_filter_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_code_display()}: {self.field or 'event'}"
