from __future__ import annotations

from django.conf import settings
from django.db import models
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase
from simple_history.models import HistoricalRecords

from agents.choices import CaseStatus, EntryKind, Intent, Priority, ResolutionCode
from journeys.models.base import Timestamped


class Case(Timestamped):
    """A customer's problem handed to people, from escalation to resolution.

    `escalation_key` is the engine's idempotency key of the step that opened it:
    a retried task finds the case instead of opening a second one.
    """

    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="cases")
    origin_run = models.ForeignKey("journeys.JourneyRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    origin_event = models.ForeignKey("journeys.Event", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    origin_workflow = models.ForeignKey(
        "journeys.Workflow", null=True, blank=True, on_delete=models.SET_NULL, related_name="cases"
    )
    escalation_key = models.CharField(max_length=200, null=True, blank=True, unique=True, editable=False)
    subject = models.CharField(max_length=255, blank=True)
    text = models.TextField(blank=True, help_text="what the customer wrote")
    category = models.SlugField(max_length=64, blank=True)
    intent = models.CharField(max_length=20, choices=Intent.choices, blank=True)
    language = models.CharField(max_length=8, blank=True)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    sentiment = models.FloatField(null=True, blank=True, help_text="-1 (angry) .. 1 (happy)")
    complexity = models.FloatField(null=True, blank=True, help_text="0 (simple) .. 1 (complex)")
    escalation_reasons = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=10, choices=CaseStatus.choices, default=CaseStatus.NEW)
    team = models.ForeignKey("agents.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="cases")
    assigned_agent = models.ForeignKey(
        "agents.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="cases"
    )
    assigned_at = models.DateTimeField(null=True, blank=True)
    sla_due_at = models.DateTimeField(
        null=True, blank=True, db_index=True, help_text="a response is due by then; empty once answered"
    )
    sla_breaches = models.PositiveSmallIntegerField(default=0)
    first_response_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    resolution_code = models.CharField(max_length=20, choices=ResolutionCode.choices, blank=True)
    reopen_count = models.PositiveSmallIntegerField(default=0)
    history = HistoricalRecords(excluded_fields=["sla_due_at"])

    class Meta:
        ordering = ["-priority", "created_at"]
        permissions = [("take_case", "Can take the case from the team queue")]
        indexes = [
            models.Index(fields=["status", "sla_due_at"], name="case_sla_idx"),
            models.Index(fields=["assigned_agent", "status"], name="case_agent_status_idx"),
            models.Index(fields=["team", "status"], name="case_team_status_idx"),
            # closed cases by when they closed: the history retention, oldest first
            models.Index(fields=["closed_at"], condition=models.Q(status="closed"), name="case_closed_idx"),
        ]

    def __str__(self) -> str:
        return f"case #{self.pk} {self.subject or self.category}".strip()

    @property
    def is_open(self) -> bool:
        return self.status not in (CaseStatus.RESOLVED, CaseStatus.CLOSED)


class CaseEntry(models.Model):
    """One line of a case's timeline: a note, a message either way, an assignment, a status change."""

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="entries")
    kind = models.CharField(max_length=12, choices=EntryKind.choices)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    body = models.TextField(blank=True)
    delivery = models.ForeignKey(
        "channels_app.Delivery", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="the delivery of a message sent to the customer",
    )
    idempotency_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name_plural = "case entries"

    def __str__(self) -> str:
        return f"{self.kind}: {self.body[:60]}"


class CaseUserObjectPermission(UserObjectPermissionBase):
    """guardian object permissions on cases with a real foreign key (fast joins, cascades)."""

    content_object = models.ForeignKey(Case, on_delete=models.CASCADE)


class CaseGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Case, on_delete=models.CASCADE)
