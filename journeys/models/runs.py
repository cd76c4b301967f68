from __future__ import annotations

from django.db import models

from journeys.choices import RunStatus
from journeys.models.base import Timestamped
from journeys.models.fields import ClientJSONField


class JourneyRun(Timestamped):
    """Where one customer is in one workflow version, and what it remembers (variables).

    `trigger_key` makes enrolment idempotent: a retried task that enrols the
    same customer for the same trigger finds the existing run.
    """

    workflow = models.ForeignKey("journeys.Workflow", on_delete=models.CASCADE, related_name="runs")
    version = models.ForeignKey("journeys.WorkflowVersion", on_delete=models.PROTECT, related_name="runs")
    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="runs")
    trigger_key = models.CharField(max_length=100)
    trigger_event = models.ForeignKey(
        "journeys.Event", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.ACTIVE)
    exclusive = models.BooleanField(default=True, help_text="counts toward 'one open run per customer'")
    current_step = models.CharField(max_length=64, blank=True)
    next_wake_at = models.DateTimeField(null=True, blank=True)
    wait_event = models.CharField(max_length=255, blank=True)
    variables = ClientJSONField(default=dict, blank=True)
    visits = models.JSONField(default=dict, blank=True, help_text="step key -> times reached")
    converted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "customer", "trigger_key"], name="run_trigger_unique"),
            models.UniqueConstraint(
                fields=["workflow", "customer"],
                condition=models.Q(exclusive=True, status__in=["active", "waiting"]),
                name="one_open_run_per_customer",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "next_wake_at"], name="run_due_idx"),
            models.Index(fields=["customer", "status"], name="run_customer_status_idx"),
        ]

    def __str__(self) -> str:
        return f"run #{self.pk} {self.status} at {self.current_step or '-'}"


class StepExecution(models.Model):
    """Log of one visit of a run to a step. Unique per (run, step, visit): a retried
    task finds the finished row and reuses its outcome instead of acting again."""

    run = models.ForeignKey(JourneyRun, on_delete=models.CASCADE, related_name="executions")
    step_key = models.CharField(max_length=64)
    step_kind = models.CharField(max_length=40)
    visit = models.PositiveIntegerField(default=1)
    outcome = models.CharField(max_length=64, blank=True)
    detail = ClientJSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "started_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "step_key", "visit"], name="step_execution_unique")
        ]

    def __str__(self) -> str:
        return f"{self.step_key}#{self.visit} -> {self.outcome or '...'}"


class TriggerWatch(models.Model):
    """An open inactivity window: event A happened; if B does not follow by `due_at`, enrol."""

    version = models.ForeignKey("journeys.WorkflowVersion", on_delete=models.CASCADE, related_name="watches")
    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="+")
    start_event = models.ForeignKey("journeys.Event", on_delete=models.CASCADE, related_name="+")
    due_at = models.DateTimeField()
    cancelled_at = models.DateTimeField(null=True, blank=True)
    fired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "start_event"], name="watch_unique")
        ]
        indexes = [models.Index(fields=["due_at"], name="watch_due_idx", condition=models.Q(fired_at__isnull=True, cancelled_at__isnull=True))]


class TriggerState(models.Model):
    """Per-version bookkeeping of time-based triggers (last cron tick handled, ...)."""

    version = models.OneToOneField("journeys.WorkflowVersion", on_delete=models.CASCADE, related_name="trigger_state")
    last_tick_at = models.DateTimeField(null=True, blank=True)


class EngineGeneration(models.Model):
    """A counter bumped whenever the set of live versions changes; workers reload their trigger index."""

    value = models.PositiveBigIntegerField(default=0)
