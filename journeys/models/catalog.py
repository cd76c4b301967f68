from __future__ import annotations

from django.db import models
from simple_history.models import HistoricalRecords

from journeys.models.base import Timestamped


class EventDefinition(Timestamped):
    """One entry of the tracking plan: what an event means, who owns it, and the
    JSON Schema its properties must follow. Shared by product, marketing, support
    and engineering so rules never refer to properties that never arrive."""

    name = models.CharField(max_length=255, unique=True)
    description = models.TextField(blank=True)
    owner = models.CharField(max_length=100, blank=True, help_text="team or person answerable for it")
    schema = models.JSONField(
        default=dict, blank=True,
        help_text='JSON Schema for the properties, e.g. {"type": "object", "required": ["total"], '
                  '"properties": {"total": {"type": "number"}}}',
    )
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def property_names(self) -> list[str]:
        return sorted((self.schema or {}).get("properties", {}))


class LifecycleStage(Timestamped):
    """A shared customer state (prospect, onboarding, active, at risk, churned).

    A stage with a rule is entered automatically when its rule is the first true
    one (by `order`); stages without a rule are only set by workflow steps, and
    rules do not move a customer out of such a stage (the step that set it owns it).
    """

    key = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    order = models.PositiveSmallIntegerField(default=0)
    rule = models.TextField(blank=True, help_text="e.g. profile.days_since_last_seen > 30")
    description = models.TextField(blank=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["order", "key"]

    def __str__(self) -> str:
        return self.name


class StageTransition(models.Model):
    """History of a customer's stage: one row per change, with what caused it."""

    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="stage_transitions")
    from_stage = models.CharField(max_length=40, blank=True)
    to_stage = models.CharField(max_length=40)
    reason = models.CharField(max_length=255)
    at = models.DateTimeField()

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.from_stage or '-'} -> {self.to_stage}"


class StageRecheck(models.Model):
    """When a customer's rule-defined stage must be evaluated again (PostgreSQL): the hourly
    refresh reads only the rows due, not every customer.

    The refresh writes the earliest moment the stage rules' answer may change with time alone
    (journeys.rules.sql.due); no row means it never does. A database trigger marks a customer
    due at once ('-infinity') when anything a rule can read changes on the row, whatever wrote
    it (the event API's set-based updates, imports, merges, steps, the admin); the event
    processor does so for the customers of events a rule counts (a late event changes no row).
    """

    # No foreign key in the database: a mark never waits on a lock a worker holds on the customer
    # (its check would); a mark left by a customer deleted meanwhile is dropped by the refresh.
    customer = models.OneToOneField("journeys.Customer", primary_key=True, on_delete=models.CASCADE,
                                    related_name="+", db_constraint=False)
    due_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["due_at"], name="stage_recheck_due_idx")]


class StageRules(models.Model):
    """The stage rules the rechecks were worked out for (one row): when they change, the next
    refresh walks every customer once and writes everyone's moment again."""

    fingerprint = models.CharField(max_length=64)
    walked_at = models.DateTimeField()
