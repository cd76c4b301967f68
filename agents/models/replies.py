from __future__ import annotations

from django.db import models
from simple_history.models import HistoricalRecords

from agents.choices import Intent
from journeys.models.base import Timestamped


class ReplyTemplate(Timestamped):
    """A canned answer agents start from; matched to a case by category and intent,
    and personalised with the customer's profile (Django template language)."""

    name = models.CharField(max_length=100, unique=True)
    category = models.SlugField(max_length=64, blank=True, help_text="empty = any category")
    intent = models.CharField(max_length=20, choices=Intent.choices, blank=True, help_text="empty = any intent")
    language = models.CharField(max_length=8, default="en")
    body = models.TextField(help_text="e.g. Hi {{ profile.first_name|default:'there' }}, ...")
    active = models.BooleanField(default=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
