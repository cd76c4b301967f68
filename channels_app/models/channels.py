from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from simple_history.models import HistoricalRecords

from channels_app.choices import BreakerState, ChannelKind


class Channel(models.Model):
    """Where messages go out: a kind (email, sms...) served by a provider, with the
    delivery policy that belongs to the channel (quiet hours, rate, retries, breaker).

    `settings` holds non-secret provider settings only; secrets are named by an
    environment variable (keys ending in `_env`, e.g. `"auth_token_env": "TWILIO_TOKEN"`).
    """

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    provider = models.CharField(max_length=40, default="console", help_text="registered provider name")
    settings = models.JSONField(
        default=dict, blank=True,
        help_text='non-secret provider settings; name secrets by env var, e.g. {"auth_token_env": "TWILIO_TOKEN"}',
    )
    enabled = models.BooleanField(default=True, help_text="disabled: sends go to the fallback channel")
    paused = models.BooleanField(default=False, help_text="paused: sends wait (deferred) until it is resumed")
    fallback = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                 help_text="used when this channel is disabled, its breaker is open or it cannot reach the customer")
    rate_limit_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="empty = unlimited")
    quiet_start = models.TimeField(null=True, blank=True, help_text="quiet hours start, customer's local time")
    quiet_end = models.TimeField(null=True, blank=True, help_text="quiet hours end, customer's local time")
    max_attempts = models.PositiveSmallIntegerField(default=5)
    retry_base_s = models.PositiveIntegerField(default=30, help_text="first retry delay; doubles each attempt (with jitter)")
    retry_max_s = models.PositiveIntegerField(default=3600)
    breaker_threshold = models.PositiveSmallIntegerField(default=5, help_text="consecutive failures that open the breaker")
    breaker_cooldown_s = models.PositiveIntegerField(default=60, help_text="seconds open before a half-open probe")
    history = HistoricalRecords()

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def clean(self) -> None:
        """Quiet hours take both ends and two different times: one end alone, or start == end, was
        saved and meant no quiet hours at all, without a word (the delivery policy holds nothing)."""
        super().clean()
        start, end = self.quiet_start, self.quiet_end
        if (start is None) != (end is None):
            missing, given = ("quiet_end", "quiet start") if end is None else ("quiet_start", "quiet end")
            raise ValidationError({missing: f"is required when the {given} is set: quiet hours need both ends "
                                            "(leave both empty for none)"})
        if start is not None and start == end:
            raise ValidationError({"quiet_end": f"must differ from the quiet start ({start:%H:%M}): the same time at "
                                                "both ends holds nothing (leave both empty for none)"})


class ChannelBreaker(models.Model):
    """Circuit-breaker state of one channel, in the database so every worker shares it."""

    channel = models.OneToOneField(Channel, on_delete=models.CASCADE, related_name="breaker")
    state = models.CharField(max_length=10, choices=BreakerState.choices, default=BreakerState.CLOSED)
    consecutive_failures = models.PositiveIntegerField(default=0)
    # how long those failures took together (DELIVERY_BREAKER_FAILING_S opens the breaker on time lost)
    failing_ms = models.PositiveBigIntegerField(default=0)
    # the vendor's last Retry-After (a moment): the half-open probe waits for it, not only the cooldown
    retry_after_until = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    probe_started_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.channel.name}: {self.state}"


class InboundMessage(models.Model):
    """An inbound message a provider's webhook handed over (Twilio's MessageSid), kept so that
    the webhook retried (a timeout, Twilio's `#rc` retries) counts once: the unique key is what
    the retry, or a copy posted at the same moment, runs into. Nothing of the sender or the text
    is kept."""

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="+")
    message_id = models.CharField(max_length=200, help_text="the provider's id of the message (MessageSid)")
    received_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["channel", "message_id"], name="inbound_message_once")]

    def __str__(self) -> str:
        return f"{self.channel_id}:{self.message_id}"
