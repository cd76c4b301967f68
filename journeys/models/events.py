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
        choices=[("accept", "Accept"), ("flag", "Accept and flag"), ("reject", "Reject (quarantine; 400 if strict)")],
        default="flag",
        help_text="what to do with events that break the event catalog's schema",
    )
    strict = models.BooleanField(
        default=False,
        help_text="all or nothing: one bad event rejects the whole request with 400 and nothing is stored "
        "(off: the good events are stored and each bad one is quarantined, answer 200)",
    )
    retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="delete this source's events older than this many days (empty = keep forever)",
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
    `pending` is found again by the sweeper until it has been processed.

    A repeated (source, messageId) is refused by EventKey, not by a unique index here: on
    PostgreSQL this table is partitioned by id range (see docs/SCALING.md), where a unique index
    would have to include the id. Old events go by their source's `retention_days`.
    """

    # No single-column indexes on the two keys: (source, received_at) and (customer, timestamp) lead with them.
    source = models.ForeignKey(Source, on_delete=models.PROTECT, related_name="events", db_index=False)
    message_id = models.CharField(max_length=255)
    type = models.CharField(max_length=16, choices=EventType.choices)
    name = models.CharField(max_length=255, blank=True, db_index=True)
    user_id = models.CharField(max_length=255, blank=True)
    anonymous_id = models.CharField(max_length=255, blank=True)
    previous_id = models.CharField(max_length=255, blank=True, help_text="alias: the id being merged")
    group_id = models.CharField(max_length=255, blank=True)
    category = models.CharField(max_length=255, blank=True, help_text="page/screen category")
    channel = models.CharField(max_length=64, blank=True, help_text="the client's channel: server, browser, mobile...")
    version = models.CharField(max_length=32, blank=True, help_text="the spec version the client sent")
    customer = models.ForeignKey(
        "journeys.Customer", null=True, blank=True, on_delete=models.SET_NULL, related_name="events", db_index=False
    )
    properties = ClientJSONField(default=dict, blank=True)
    traits = ClientJSONField(default=dict, blank=True)
    context = ClientJSONField(default=dict, blank=True)
    integrations = ClientJSONField(default=dict, blank=True)
    metadata = ClientJSONField(default=dict, blank=True, help_text="the client's _metadata")
    other = ClientJSONField(
        default=dict, blank=True, help_text="every other top-level field the client sent, verbatim"
    )
    violations = models.JSONField(
        default=list, blank=True, help_text="event catalog schema violations (policy: accept and flag)"
    )
    changes = models.JSONField(
        default=dict, blank=True, help_text="profile traits this event changed: {trait: [old, new]}"
    )
    timestamp = models.DateTimeField(help_text="when it happened, corrected for client clock skew")
    original_timestamp = models.DateTimeField(
        null=True, blank=True, help_text="the client's clock: originalTimestamp if sent, else its timestamp"
    )
    sent_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField()
    ip = models.GenericIPAddressField(
        null=True, blank=True, help_text="the sender's address (X-Forwarded-For only from trusted proxies)"
    )
    status = models.CharField(max_length=12, choices=EventStatus.choices, default=EventStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="why it failed, or (history) why it started no workflow")

    class Meta:
        ordering = ["-timestamp", "-id"]
        indexes = [
            # The outbox and the failed list: partial, so they stay as small as what is pending or failed.
            models.Index(fields=["received_at"], name="event_outbox_idx", condition=models.Q(status="pending")),
            models.Index(fields=["received_at"], name="event_failed_idx", condition=models.Q(status="failed")),
            models.Index(fields=["customer", "timestamp"], name="event_customer_ts_idx"),
            models.Index(fields=["customer", "name", "timestamp"], name="event_customer_name_idx"),
            models.Index(fields=["source", "received_at"], name="event_source_received_idx"),  # retention
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.name}".strip()


class EventKey(models.Model):
    """A received (source, messageId): what makes a resent event be stored once.

    Kept for EVENT_API['DEDUP_DAYS'] days (clients resend within minutes or hours), so this
    unique index stays as small as that window however large the event table grows. The
    product's own events (source `internal`) keep their keys as long as the events.
    """

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="+", db_index=False)
    message_id = models.CharField(max_length=255)
    received_at = models.DateTimeField()
    event_id = models.BigIntegerField(help_text="the stored event (no foreign key: events may go first)")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "message_id"], name="event_key_unique")]
        # per source: the purge skips the product's own keys without walking them
        indexes = [models.Index(fields=["source", "received_at"], name="event_key_source_received_idx")]

    def __str__(self) -> str:
        return f"{self.source_id}:{self.message_id}"
