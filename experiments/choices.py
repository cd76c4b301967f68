"""Constants of the experiments app, in one place."""

from django.db import models


class ExperimentStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    CONCLUDED = "concluded", "Concluded"


class ExperimentMode(models.TextChoices):
    FIXED = "fixed", "Fixed weights (A/B/n)"
    BANDIT = "bandit", "Bandit (Thompson sampling)"
    PERSONALIZED = "personalized", "Next-best-action (propensity model)"


class AssignmentVia(models.TextChoices):
    HASH = "hash", "Hash of salt and customer"
    MODEL = "model", "Propensity model (next-best-action)"


class Metric(models.TextChoices):
    CONVERSION = "conversion", "Primary: goal within the window"
    OPEN_RATE = "open_rate", "Open rate"
    CLICK_RATE = "click_rate", "Click rate"
    COMPLETION = "completion", "Journey completion rate"
    RESOLUTION = "resolution_time", "Resolution time (agents)"


class CohortKind(models.TextChoices):
    ENTRY_WEEK = "entry_week", "Entry week"
    SIGNUP_MONTH = "signup_month", "Signup month"
    TRAIT = "trait", "Profile trait"
    CHANNEL = "channel", "Channel"


HOLDOUT = "holdout"
