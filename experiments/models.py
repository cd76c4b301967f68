"""Experiments, their arms, and the one assignment each customer gets.

An Experiment is attached to `experiment_split` steps by its `key`. Arms and
the experiment keep history (simple_history) so every weight change, retirement
and conclusion says who and why.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from simple_history.models import HistoricalRecords

from experiments.choices import AssignmentVia, ExperimentMode, ExperimentStatus
from journeys.models import Timestamped


def new_salt() -> str:
    return secrets.token_hex(8)


class Experiment(Timestamped):
    """A test of alternative paths: who gets which arm, and what counts as success.

    Primary metric: the customer sends `goal_event` within `window_s` after entry
    (or, without a goal event, the run converts within the window).
    """

    key = models.SlugField(max_length=64, unique=True, help_text="named by experiment_split steps")
    name = models.CharField(max_length=200)
    hypothesis = models.TextField(blank=True, help_text="what we expect and why")
    workflow = models.ForeignKey(
        "journeys.Workflow", null=True, blank=True, on_delete=models.SET_NULL, related_name="experiments"
    )
    status = models.CharField(max_length=10, choices=ExperimentStatus.choices, default=ExperimentStatus.DRAFT)
    mode = models.CharField(max_length=14, choices=ExperimentMode.choices, default=ExperimentMode.FIXED)
    salt = models.CharField(max_length=32, default=new_salt, help_text="changing it would reshuffle: don't")
    holdout_share = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(0.5)],
        help_text="share of entrants held out: they follow the control path but get no messages",
    )
    goal_event = models.CharField(max_length=255, blank=True, help_text="primary metric: this event after entry")
    window_s = models.PositiveIntegerField(default=7 * 86400, help_text="conversion (and attribution) window, seconds")
    secondary_metrics = models.JSONField(
        default=list, blank=True, help_text='e.g. ["open_rate", "click_rate", "completion", "resolution_time"]'
    )
    alpha = models.FloatField(default=0.05, validators=[MinValueValidator(0.001), MaxValueValidator(0.2)])
    power = models.FloatField(default=0.8, validators=[MinValueValidator(0.5), MaxValueValidator(0.99)])
    baseline_rate = models.FloatField(
        default=0.1,
        validators=[MinValueValidator(0.001), MaxValueValidator(0.999)],
        help_text="expected control conversion, for the fixed-horizon sample-size plan",
    )
    min_detectable_effect = models.FloatField(
        default=0.02,
        validators=[MinValueValidator(0.0001), MaxValueValidator(0.9)],
        help_text="smallest absolute lift worth detecting (plan and mSPRT prior scale)",
    )
    bandit_every = models.PositiveIntegerField(default=100, help_text="bandit: new assignments between weight updates")
    bandit_floor = models.FloatField(default=0.02, help_text="bandit: minimum weight so no arm starves")
    exploration_share = models.FloatField(default=0.1, help_text="next-best-action: share assigned at random")
    auto_retire = models.BooleanField(
        default=False, help_text="retire an arm once the always-valid test says it is worse than control"
    )
    winner = models.ForeignKey("experiments.Arm", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    concluded_at = models.DateTimeField(null=True, blank=True)
    weights_updated_at = models.DateTimeField(null=True, blank=True)
    assignments_at_update = models.PositiveIntegerField(default=0, editable=False)
    # The newest assignment the last update saw: the minute's check counts past it, at most bandit_every.
    assignment_id_at_update = models.BigIntegerField(default=0, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    history = HistoricalRecords()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"

    @property
    def window_label(self) -> str:
        s = self.window_s
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if s >= size and s % size == 0:
                return f"{s // size}{unit}"
        return f"{s}s"

    @property
    def control(self) -> Arm | None:
        return next((a for a in self.arms.all() if a.is_control), None)


class Arm(models.Model):
    """One alternative. Its name is the split step's outcome; `weight` is relative."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="arms")
    name = models.SlugField(max_length=64)
    description = models.TextField(blank=True)
    is_control = models.BooleanField(default=False)
    weight = models.FloatField(default=1.0, validators=[MinValueValidator(0.0)])
    retired_at = models.DateTimeField(null=True, blank=True)
    retired_reason = models.CharField(max_length=255, blank=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["experiment", "-is_control", "id"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="arm_name_unique"),
            models.UniqueConstraint(fields=["experiment"], condition=models.Q(is_control=True), name="one_control_arm"),
        ]

    def __str__(self) -> str:
        return f"{self.experiment.key}:{self.name}"

    @property
    def active(self) -> bool:
        return self.retired_at is None


class Assignment(models.Model):
    """The arm a customer got, recorded once (unique per experiment and customer).

    `weights` is the assignment distribution in force at that moment (arm -> p,
    plus "holdout"), so the sample-ratio check stays right when weights move.
    Holdout customers have `holdout=True` and the control arm (the path they follow).
    """

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="assignments")
    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="experiment_assignments")
    arm = models.ForeignKey(Arm, on_delete=models.PROTECT, related_name="assignments")
    holdout = models.BooleanField(default=False)
    via = models.CharField(max_length=8, choices=AssignmentVia.choices, default=AssignmentVia.HASH)
    bucket = models.FloatField(help_text="the customer's hash position in [0, 1)")
    weights = models.JSONField(default=dict)
    scores = models.JSONField(default=dict, blank=True, help_text="next-best-action: predicted response per arm")
    run_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    version_id = models.BigIntegerField(null=True, blank=True)
    assigned_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["experiment", "assigned_at", "id"]
        constraints = [models.UniqueConstraint(fields=["experiment", "customer"], name="assignment_once")]
        indexes = [models.Index(fields=["experiment", "arm", "holdout"], name="assignment_arm_idx")]

    def __str__(self) -> str:
        return f"{self.customer_id} -> {'holdout' if self.holdout else self.arm.name}"

    @property
    def group(self) -> str:
        return "holdout" if self.holdout else self.arm.name


class PropensityModel(models.Model):
    """A trained response model for next-best-action: one logistic regression per arm.

    Parameters are stored as JSON (no pickles), so predicting is a dot product
    that the admin can explain coefficient by coefficient.
    """

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="models")
    features = models.JSONField(default=list, help_text="profile traits used, in order")
    params = models.JSONField(default=dict, help_text="arm -> {intercept, coef, mean, scale, n, positives}")
    trained_at = models.DateTimeField()
    samples = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True, help_text="held-out quality per arm (AUC, log loss)")

    class Meta:
        ordering = ["-trained_at", "-id"]
        get_latest_by = "trained_at"

    def __str__(self) -> str:
        return f"model for {self.experiment.key} at {self.trained_at:%Y-%m-%d %H:%M}"
