from __future__ import annotations

from django.db import models
from simple_history.models import HistoricalRecords

from channels_app.choices import DeliveryStatus, PressureAction, Reason
from channels_app.models.channels import Channel
from channels_app.models.consent import Topic
from channels_app.models.templates import MessageTemplate

SUBJECT_MAX = 998


class Delivery(models.Model):
    """One message to one customer, and the outbox row that sends it.

    The row is committed first (queued, deferred or suppressed with a reason) and
    sent afterwards by a task; `idempotency_key` (run, step, visit) makes a retried
    step or a duplicate event find this row instead of sending again.
    """

    # Indexes: every row is written four times on its way out (queued, claimed, accepted, sent) and
    # each version touches every index, so the table keeps only those a query uses: customer and
    # channel are the leading columns of the two (x, sent_at) indexes; the unique key is a
    # constraint (no LIKE-pattern twin); provider_message_id is searched exactly in the admin (a support
    # ticket's Twilio SID / SES id) through a partial index of the rows that have one.
    idempotency_key = models.CharField(max_length=200)
    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="deliveries",
                                 db_index=False)
    channel = models.ForeignKey(Channel, on_delete=models.PROTECT, related_name="deliveries", db_index=False)
    requested_channel = models.ForeignKey(Channel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                          help_text="the channel the step asked for, when a fallback was used")
    template = models.ForeignKey(MessageTemplate, null=True, blank=True, on_delete=models.SET_NULL)
    template_version = models.PositiveIntegerField(null=True, blank=True, help_text="template history id rendered")
    topic = models.ForeignKey(Topic, null=True, blank=True, on_delete=models.SET_NULL)
    transactional = models.BooleanField(default=False)
    locale = models.CharField(max_length=16, blank=True)
    run_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    step_key = models.CharField(max_length=64, blank=True)
    to = models.CharField(max_length=320, blank=True)
    # as rendered: a subject line may run to 998 characters (RFC 5322); a template's own is shorter
    subject = models.CharField(max_length=SUBJECT_MAX, blank=True)
    body = models.TextField(blank=True)
    html_body = models.TextField(blank=True)
    content_hash = models.CharField(max_length=64, blank=True)
    policy = models.JSONField(default=dict, blank=True, help_text="send-time checks asked for by the step")
    notes = models.JSONField(default=dict, blank=True, help_text="render report (missing variables), reroutes, "
                                                                 "the best-channel choice")
    choice_reason = models.CharField(max_length=255, blank=True,
                                     help_text="why a best-channel step chose this channel and this time")
    status = models.CharField(max_length=12, choices=DeliveryStatus.choices, default=DeliveryStatus.QUEUED)
    reason = models.CharField(max_length=20, choices=Reason.choices, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    provider_message_id = models.CharField(max_length=255, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # Set the moment the provider takes the message, before it gets the next one: a worker killed
    # before the batch is recorded never sends it again. Not indexed, so that write can stay on its
    # page (a HOT update touching no index); `sent_at` (indexed, for caps) follows with the batch.
    accepted_at = models.DateTimeField(null=True, blank=True, editable=False)
    delivered_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="delivery_due_idx"),
            # transactional messages waiting (few): the claim takes those due first, ahead of a marketing
            # backlog due at the same time (a rate-limited channel), without reading the backlog
            models.Index(fields=["next_attempt_at", "id"], condition=models.Q(status="deferred", transactional=True),
                         name="delivery_due_tx_idx"),
            models.Index(fields=["customer", "sent_at"], name="delivery_customer_sent_idx"),
            models.Index(fields=["channel", "sent_at"], name="delivery_channel_sent_idx"),
            # messages sent outside any run (API, transactional, test sends; few): the history retention
            models.Index(fields=["created_at"], condition=models.Q(run_id__isnull=True), name="delivery_standalone_idx"),
            # failed messages by when they failed (few: only failed rows are in it): the dashboard's
            # failures per workflow, those that never rendered as much as those a provider refused
            models.Index(fields=["updated_at"], condition=models.Q(status="failed"),
                         name="delivery_failed_idx"),
            # the admin's exact search by a provider's message id; set once, at acceptance, and the
            # queued rows' empty ids are left out
            models.Index(fields=["provider_message_id"], condition=~models.Q(provider_message_id=""),
                         name="delivery_provider_id_idx"),
        ]
        constraints = [models.UniqueConstraint(fields=["idempotency_key"], name="delivery_idempotency_key_unique")]

    def __str__(self) -> str:
        return f"{self.channel.kind} to {self.to or self.customer_id}: {self.status}"


class DeliveryAttempt(models.Model):
    """One call to a provider: the log behind retries, error rates and latency."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="attempts")
    at = models.DateTimeField(db_index=True)
    ok = models.BooleanField()
    transient = models.BooleanField(default=False)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.delivery_id} @ {self.at:%H:%M:%S}: {'ok' if self.ok else 'error'}"


class FrequencyCap(models.Model):
    """At most `limit` messages per `window_s` seconds per customer: globally (no channel,
    no topic), per channel, per topic or both. A capped send is suppressed or deferred.
    Transactional messages are not capped and do not count (services/policy.py); a change
    that can free messages releases those this cap held (services/caps.py)."""

    name = models.CharField(max_length=100, unique=True)
    channel = models.ForeignKey(Channel, null=True, blank=True, on_delete=models.CASCADE)
    topic = models.ForeignKey(Topic, null=True, blank=True, on_delete=models.CASCADE)
    limit = models.PositiveIntegerField(
        help_text="messages per customer within the window; transactional messages (receipts, one-time codes) "
                  "are neither held by a cap nor counted towards it")
    window_s = models.PositiveIntegerField(help_text="e.g. 86400 for a day (a rolling window, not a calendar day)")
    action = models.CharField(max_length=10, choices=PressureAction.choices, default=PressureAction.SUPPRESS,
                              help_text="suppress: the extra message is dropped; defer: it waits until the window "
                                        "frees (a campaign's message may then arrive a day late)")
    enabled = models.BooleanField(default=True)
    history = HistoricalRecords()

    def __str__(self) -> str:
        return f"{self.name}: {self.limit} per {self.window_s}s"
