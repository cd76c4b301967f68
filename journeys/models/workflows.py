from __future__ import annotations

from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords

from journeys.choices import ReentryPolicy, TriggerKind, VersionState, WorkflowStatus
from journeys.models.base import Timestamped
from journeys.models.fields import BusinessHoursField


class BusinessUnit(Timestamped):
    """A team that owns workflows (retention, support, growth...); editors are scoped to it."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    # The group whose members edit this unit's workflows (it holds edit_unit_workflows on this
    # unit). Found through this key, never by its name: a slug renamed or reused later must not
    # move anyone's rights (`business_unit_grant_editor`, `business_unit_revoke_editor`).
    editors_group = models.OneToOneField(
        "auth.Group", null=True, blank=True, editable=False, on_delete=models.SET_NULL, related_name="editing_unit",
        help_text="the group of this unit's editors (made at the first grant)",
    )
    history = HistoricalRecords(excluded_fields=["editors_group"])

    class Meta:
        permissions = [
            # Granted per unit with django-guardian: the holder edits drafts of the unit's workflows.
            ("edit_unit_workflows", "Can edit drafts of and propose changes to this unit's workflows"),
        ]

    def __str__(self) -> str:
        return self.name


class Workflow(Timestamped):
    """A customer journey. Its behaviour lives in versions; `live_version` points at the one running."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    business_unit = models.ForeignKey(BusinessUnit, on_delete=models.PROTECT, related_name="workflows")
    status = models.CharField(max_length=12, choices=WorkflowStatus.choices, default=WorkflowStatus.ACTIVE)
    live_version = models.ForeignKey(
        "journeys.WorkflowVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    canary_version = models.ForeignKey(
        "journeys.WorkflowVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="an approved version taking a share of new entries beside the live one",
    )
    canary_percent = models.PositiveSmallIntegerField(
        default=0, help_text="share of new entries (per customer, deterministic) that go to the canary version"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]
        permissions = [
            ("propose_workflow", "Can propose a version for review"),
            ("review_workflow", "Can approve or reject a proposed version"),
            ("publish_workflow", "Can publish, stage a canary and roll back"),
            ("operate_workflow", "Can pause workflows and channels and switch safe mode"),
        ]

    def __str__(self) -> str:
        return self.name


class WorkflowVersion(Timestamped):
    """One revision of a workflow: trigger, entry and exit rules, and the step graph.

    A version that has ever been live is frozen (`frozen_at` set): changing it
    means a new draft (`version_new_draft`).
    """

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=12, choices=VersionState.choices, default=VersionState.DRAFT)
    notes = models.TextField(blank=True, help_text="what changed in this version and why")

    trigger_kind = models.CharField(max_length=20, choices=TriggerKind.choices, default=TriggerKind.EVENT)
    trigger_event = models.CharField(
        max_length=255, blank=True, db_index=True,
        help_text="event name for 'event' and 'inactivity' triggers (indexed for the engine)",
    )
    trigger_config = models.JSONField(
        default=dict, blank=True,
        help_text="kind-specific settings, e.g. {\"filter\": \"event.properties.total > 50\"}",
    )
    entry_rule = models.TextField(blank=True, help_text="rule that must be true to enter, e.g. profile.ltv >= 100")
    reentry_policy = models.CharField(max_length=10, choices=ReentryPolicy.choices, default=ReentryPolicy.ONCE)
    reentry_cooldown_s = models.PositiveIntegerField(
        default=0, help_text="seconds before a customer may enter again (cooldown policy)"
    )
    allow_concurrent_runs = models.BooleanField(
        default=False, help_text="allow several active runs per customer in this workflow"
    )
    goal_event = models.CharField(
        max_length=255, blank=True, db_index=True,
        help_text="event that ends the run and counts as a conversion (exit criterion)",
    )
    goal_filter = models.TextField(blank=True, help_text="optional rule the goal event must satisfy")
    entry_step = models.CharField(max_length=64, blank=True, help_text="key of the first step")
    business_hours = BusinessHoursField()

    frozen_at = models.DateTimeField(null=True, blank=True, editable=False)
    published_at = models.DateTimeField(null=True, blank=True, editable=False)
    submitted_at = models.DateTimeField(null=True, blank=True, editable=False)
    approved_at = models.DateTimeField(null=True, blank=True, editable=False)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    approved_fingerprint = models.CharField(
        max_length=64, blank=True, editable=False,
        help_text="hash of the definition that was approved; publishing anything else needs a new review",
    )
    retired_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    history = HistoricalRecords()

    class Meta:
        ordering = ["workflow", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "number"], name="version_number_unique"),
            models.UniqueConstraint(
                fields=["workflow"], condition=models.Q(state="live"), name="one_live_version_per_workflow"
            ),
        ]
        indexes = [models.Index(fields=["state", "trigger_kind"], name="version_live_trigger_idx")]

    def __str__(self) -> str:
        return f"{self.workflow.name} v{self.number} ({self.state})"

    @property
    def is_frozen(self) -> bool:
        return self.frozen_at is not None

    @property
    def is_canary(self) -> bool:
        return self.workflow.canary_version_id == self.pk

    @property
    def trigger_settings(self) -> dict:
        """`trigger_config` when it is a JSON object, as every save path makes it, else {}: what
        pages and the engine read, so that a bad row written around them cannot break a page
        (validation reports it: `trigger_clean`)."""
        return self.trigger_config if isinstance(self.trigger_config, dict) else {}

    @property
    def stage(self) -> str:
        """The lifecycle stage shown to people: the state, or 'canary' while it takes a share of entries."""
        return "canary" if self.state == "approved" and self.is_canary else self.state


class Step(models.Model):
    """A node of a version's graph; `kind` names a registered step kind that owns `config`."""

    version = models.ForeignKey(WorkflowVersion, on_delete=models.CASCADE, related_name="steps")
    key = models.SlugField(max_length=64, help_text="stable id within the version, used by edges")
    kind = models.CharField(max_length=40)
    name = models.CharField(max_length=200, blank=True)
    config = models.JSONField(default=dict, blank=True)
    x = models.IntegerField(default=0, help_text="position for the graph drawing")
    y = models.IntegerField(default=0)
    history = HistoricalRecords()

    class Meta:
        ordering = ["version", "y", "x", "id"]
        constraints = [models.UniqueConstraint(fields=["version", "key"], name="step_key_unique")]

    def __str__(self) -> str:
        return f"{self.key} ({self.kind})"


class Edge(models.Model):
    """A labelled arrow: when `source` ends with `outcome`, go to `target`."""

    version = models.ForeignKey(WorkflowVersion, on_delete=models.CASCADE, related_name="edges")
    source = models.ForeignKey(Step, on_delete=models.CASCADE, related_name="out_edges")
    outcome = models.CharField(max_length=64, default="next")
    target = models.ForeignKey(Step, on_delete=models.CASCADE, related_name="in_edges")
    history = HistoricalRecords()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "outcome"], name="edge_outcome_unique")]

    def __str__(self) -> str:
        return f"{self.source.key} -[{self.outcome}]-> {self.target.key}"
