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


def choice_unique(owner: str, prefix: str) -> list[models.UniqueConstraint]:
    """One row per `owner` x channel kind x topic. A missing topic means every topic, and NULLs
    never clash in a unique index, so that row has a constraint of its own."""
    return [
        models.UniqueConstraint(fields=[owner, "channel_kind", "topic"], condition=Q(topic__isnull=False),
                                name=f"{prefix}_kind_topic_unique"),
        models.UniqueConstraint(fields=[owner, "channel_kind"], condition=Q(topic__isnull=True),
                                name=f"{prefix}_kind_alltopics_unique"),
    ]


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
        constraints = choice_unique("customer", "consent_customer")

    def __str__(self) -> str:
        return f"{self.customer_id} {self.channel_kind or '*'}/{self.topic_id or '*'}: {self.status}"


class Suppression(models.Model):
    """What an erasure keeps of a person's objection, so that it still holds when they come back
    under a new profile (a stale app or a CRM import brings their address again): the keyed
    digest of one of their addresses (an email address or phone number, `address_digest`) and
    the channel kind x topic they had opted out of, with the status as the consent check reads
    it (`opted_out`, or a hard bounce's mark). No address, name or profile is kept.

    Sending reads it as a consent of whoever has that address, until that person opts in again
    explicitly (the preference centre, SMS START, ops on the Consent form), which lifts it.

    The status `opted_in` marks such an explicit opt-in made from a live profile with the address
    (`address_opt_ins_record`), since `created_at`: the opt-outs of other live profiles holding
    the address made before it no longer hold the address (`ConsentBook.address_rows`)."""

    digest = models.CharField(max_length=64, help_text="keyed digest of the address (never the address)")
    channel_kind = models.CharField(max_length=10, choices=ChannelKind.choices, blank=True)
    topic = models.ForeignKey(Topic, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=100, help_text="opted_out, or a hard bounce's mark")
    created_at = models.DateTimeField()

    class Meta:
        constraints = choice_unique("digest", "suppression_digest")

    def __str__(self) -> str:
        return f"{self.digest[:8]}… {self.channel_kind or '*'}/{self.topic_id or '*'}: {self.status}"


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
