"""The outbound event stream: destinations, the outbox of what happened, and the delivery log."""

from __future__ import annotations

from django.db import models
from simple_history.models import HistoricalRecords

from journeys.models.base import Timestamped


class StreamDestination(Timestamped):
    """An HTTPS endpoint that receives what happens (messages, journeys, cases) in signed batches.

    The signing secret (`whsec_...`, Standard Webhooks) is derived from the server's SECRET_KEY
    and `secret_salt`, so the database alone never holds it; it is shown when the destination is
    made and when its secret is rotated.
    """

    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=500, help_text="HTTPS endpoint that receives the batches (POST)")
    event_types = models.JSONField(default=list, blank=True, help_text="types it wants; empty = every type")
    enabled = models.BooleanField(default=True, help_text="disabled: nothing more is recorded for it")
    batch_size = models.PositiveSmallIntegerField(default=100, help_text="events per request (1-1000)")
    max_failures = models.PositiveSmallIntegerField(
        default=30, help_text="failed attempts in a row before delivery pauses (backoff caps at an hour: ~1 day)"
    )
    secret_salt = models.CharField(max_length=64, editable=False)
    secret_rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    previous_secret_salt = models.CharField(max_length=64, blank=True, editable=False,
                                            help_text="the secret before the last rotation also signs, for a while")
    paused_at = models.DateTimeField(null=True, blank=True, editable=False)
    pause_reason = models.CharField(max_length=255, blank=True, editable=False)
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    next_attempt_at = models.DateTimeField(null=True, blank=True, editable=False)
    lease_until = models.DateTimeField(null=True, blank=True, editable=False,
                                       help_text="a worker is sending a batch until then")
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    history = HistoricalRecords(excluded_fields=["secret_salt", "previous_secret_salt", "consecutive_failures", "next_attempt_at",
                                                 "lease_until", "last_success_at", "last_error"])

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class StreamBatch(models.Model):
    """One signed request to a destination (a batch of events): the delivery log.

    `webhook_id` stays the same on every retry, so the receiver can drop a repeat."""

    destination = models.ForeignKey(StreamDestination, on_delete=models.CASCADE, related_name="batches")
    webhook_id = models.CharField(max_length=64, unique=True)
    events_count = models.PositiveIntegerField(default=0)
    first_event_id = models.BigIntegerField(null=True)
    last_event_id = models.BigIntegerField(null=True)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "stream batches"
        indexes = [models.Index(fields=["destination", "delivered_at"], name="streambatch_open_idx"),
                   models.Index(fields=["delivered_at"], name="streambatch_delivered_idx",
                                condition=models.Q(delivered_at__isnull=False))]  # the purge, oldest first

    def __str__(self) -> str:
        return f"{self.webhook_id} ({self.events_count} events)"


class StreamEvent(models.Model):
    """One thing that happened, for one destination: the outbox row, written in the same
    transaction as what it describes. `key` names what happened (unique per destination), so
    the same fact recorded twice is stored once."""

    destination = models.ForeignKey(StreamDestination, on_delete=models.CASCADE, related_name="events")
    key = models.CharField(max_length=200)
    type = models.CharField(max_length=40)
    occurred_at = models.DateTimeField()
    customer_id = models.BigIntegerField(null=True, blank=True)
    data = models.JSONField(default=dict)
    batch = models.ForeignKey(StreamBatch, null=True, blank=True, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["destination", "key"], name="streamevent_destination_key_unique")]
        indexes = [
            models.Index(fields=["destination", "id"], name="streamevent_pending_idx", condition=models.Q(batch__isnull=True)),
            models.Index(fields=["customer_id"], name="streamevent_customer_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.key}"


class StreamAttempt(models.Model):
    """One POST of a batch: status code, latency and error."""

    batch = models.ForeignKey(StreamBatch, on_delete=models.CASCADE, related_name="attempt_log")
    at = models.DateTimeField()
    ok = models.BooleanField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.batch_id} @ {self.at:%H:%M:%S}: {'ok' if self.ok else 'error'}"
