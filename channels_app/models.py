"""Channels, templates and deliveries (the first slice: the console provider and send_message)."""

from __future__ import annotations

from django.db import models
from simple_history.models import HistoricalRecords


class ChannelKind(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    PUSH = "push", "Push"
    IN_APP = "in_app", "In-app"
    CHAT = "chat", "Chat"
    VOICE = "voice", "Voice"
    WEBHOOK = "webhook", "Webhook"


class DeliveryStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    SUPPRESSED = "suppressed", "Suppressed"


class Channel(models.Model):
    """Where messages go out: a kind (email, sms...) served by a provider."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    provider = models.CharField(max_length=40, default="console", help_text="registered provider name")
    settings = models.JSONField(default=dict, blank=True, help_text="non-secret provider settings")
    enabled = models.BooleanField(default=True)
    fallback = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                 help_text="used when this channel is disabled or cannot reach the customer")
    history = HistoricalRecords()

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


class MessageTemplate(models.Model):
    """Subject and body in the Django template language, rendered with profile/event/journey."""

    name = models.CharField(max_length=100, unique=True)
    subject = models.CharField(max_length=255, blank=True)
    body = models.TextField()
    history = HistoricalRecords()

    def __str__(self) -> str:
        return self.name


class Delivery(models.Model):
    """One message to one customer. `idempotency_key` (run, step, visit) makes a retried step send once."""

    idempotency_key = models.CharField(max_length=200, unique=True)
    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="deliveries")
    channel = models.ForeignKey(Channel, on_delete=models.PROTECT, related_name="deliveries")
    template = models.ForeignKey(MessageTemplate, null=True, on_delete=models.SET_NULL)
    run_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    step_key = models.CharField(max_length=64, blank=True)
    to = models.CharField(max_length=320, blank=True)
    subject = models.CharField(max_length=255, blank=True)
    body = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=DeliveryStatus.choices, default=DeliveryStatus.QUEUED)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.channel.kind} to {self.to or self.customer_id}: {self.status}"
