from __future__ import annotations

import hashlib

from django.db import models
from simple_history.models import HistoricalRecords

from journeys.choices import EventStatus, EventType
from journeys.models.base import Timestamped
from journeys.models.fields import ClientJSONField


def hash_write_key(key: str) -> str:
    """Write keys are 32 random bytes, so a plain SHA-256 is enough (no brute force)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class Source(Timestamped):
    """A named sender of events (an app, a pipeline) with its own write key.

    Only the SHA-256 of the key is stored; the key itself is shown once.
    """

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_prefix = models.CharField(max_length=12, editable=False, help_text="first characters, to tell keys apart")
    enabled = models.BooleanField(default=True)
    rate_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="requests per rate window for this source; empty = the settings default",
    )
    key_rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    schema_policy = models.CharField(
        max_length=10,
        choices=[("accept", "Accept"), ("flag", "Accept and flag"), ("reject", "Reject with 400")],
        default="flag",
        help_text="what to do with events that break the event catalog's schema",
    )
    allow_known_merges = models.BooleanField(
        default=False,
        help_text="let an alias from this source merge one known user id into another (it moves their email, "
                  "events and history); off, such an alias is refused and listed under Merge refusals",
    )
    history = HistoricalRecords(excluded_fields=["key_hash"])

    def __str__(self) -> str:
        return self.name


class Event(models.Model):
    """One received event. The table is also the engine's outbox: a row in
    `pending` is found again by the sweeper until it has been processed."""

    source = models.ForeignKey(Source, on_delete=models.PROTECT, related_name="events")
    message_id = models.CharField(max_length=255)
    type = models.CharField(max_length=16, choices=EventType.choices)
    name = models.CharField(max_length=255, blank=True, db_index=True)
    user_id = models.CharField(max_length=255, blank=True)
    anonymous_id = models.CharField(max_length=255, blank=True)
    customer = models.ForeignKey(
        "journeys.Customer", null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    properties = ClientJSONField(default=dict, blank=True)
    traits = ClientJSONField(default=dict, blank=True)
    context = ClientJSONField(default=dict, blank=True)
    integrations = ClientJSONField(default=dict, blank=True)
    violations = models.JSONField(
        default=list, blank=True, help_text="event catalog schema violations (policy: accept and flag)"
    )
    changes = models.JSONField(
        default=dict, blank=True, help_text="profile traits this event changed: {trait: [old, new]}"
    )
    timestamp = models.DateTimeField(help_text="when it happened, corrected for client clock skew")
    original_timestamp = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField()
    status = models.CharField(max_length=12, choices=EventStatus.choices, default=EventStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-timestamp", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["source", "message_id"], name="event_source_message_unique")
        ]
        indexes = [
            models.Index(fields=["status", "received_at"], name="event_outbox_idx"),
            models.Index(fields=["customer", "timestamp"], name="event_customer_ts_idx"),
            models.Index(fields=["customer", "name", "timestamp"], name="event_customer_name_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.name}".strip()
