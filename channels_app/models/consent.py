from __future__ import annotations

from django.db import models
from django.db.models import Q
from simple_history.models import HistoricalRecords

from channels_app.choices import ChannelKind, ConsentStatus
from journeys.models import Customer


class Topic(models.Model):
    """A subscription topic (marketing, product updates, transactional...).

    `requires_opt_in`: only customers who opted in get it. `transactional`: bypasses
    topic and channel opt-outs, quiet hours and caps, but never a global do-not-contact.
    """

    PERSONALIZATION = "personalization"  # purpose topic: may we use traits/scores in messages?

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    requires_opt_in = models.BooleanField(default=False)
    transactional = models.BooleanField(default=False)
    history = HistoricalRecords()

    def __str__(self) -> str:
        return self.name


class Consent(models.Model):
    """One choice of one customer: channel kind x topic. Empty channel kind = every
    channel; no topic = every topic (a channel-wide opt-out such as SMS STOP). Both
    empty and opted out = global do-not-contact. Every change is kept in `history`."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="consents")
    channel_kind = models.CharField(max_length=10, choices=ChannelKind.choices, blank=True)
    topic = models.ForeignKey(Topic, null=True, blank=True, on_delete=models.CASCADE)
    status = models.CharField(max_length=10, choices=ConsentStatus.choices, default=ConsentStatus.UNKNOWN)
    source = models.CharField(max_length=100, help_text="where the choice came from: preference_centre, sms_stop, admin...")
    updated_at = models.DateTimeField()
    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["customer", "channel_kind", "topic"], condition=Q(topic__isnull=False),
                                    name="consent_customer_kind_topic_unique"),
            models.UniqueConstraint(fields=["customer", "channel_kind"], condition=Q(topic__isnull=True),
                                    name="consent_customer_kind_alltopics_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} {self.channel_kind or '*'}/{self.topic_id or '*'}: {self.status}"


class DataSubject(Customer):
    """The customer seen as a data subject: consent, export and erasure in the admin."""

    class Meta:
        proxy = True
        verbose_name = "data subject"


class ErasureRecord(models.Model):
    """Proof that an erasure happened (who, when, why, what) without keeping the personal data."""

    customer_id_erased = models.BigIntegerField(db_index=True)
    actor = models.CharField(max_length=255)
    reason = models.CharField(max_length=255, blank=True)
    counts = models.JSONField(default=dict)
    erased_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-erased_at"]

    def __str__(self) -> str:
        return f"customer #{self.customer_id_erased} erased {self.erased_at:%Y-%m-%d}"
