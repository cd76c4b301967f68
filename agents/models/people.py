from __future__ import annotations

from datetime import datetime, time

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models
from simple_history.models import HistoricalRecords

from agents.choices import AgentStatus
from journeys.engine.runtime import customer_zone
from journeys.models.base import Timestamped

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Team(Timestamped):
    """A group of agents with one queue. Its auth Group carries the queue's object permissions.

    `categories` lists the product categories the team serves (empty = any);
    the fallback team receives cases nobody else fits.
    """

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    categories = models.JSONField(default=list, blank=True, help_text='product categories served, e.g. ["billing", "hardware"]')
    is_fallback = models.BooleanField(default=False, help_text="receives cases that no agent fits")
    group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="agent_team", editable=False)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["is_fallback"], condition=models.Q(is_fallback=True), name="one_fallback_team"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not isinstance(self.categories, list) or not all(isinstance(c, str) for c in self.categories):
            raise ValidationError({"categories": 'a list of category slugs, e.g. ["billing", "hardware"]'})
        if any(not c.strip() for c in self.categories):
            raise ValidationError({"categories": 'a category cannot be blank: remove the empty "" entry '
                                                 '(an empty list already means the team serves any category)'})


class Agent(Timestamped):
    """A support person: skills, languages, how many open cases they can hold, and when they work.

    The row is also the routing lock: assignments to an agent take it FOR UPDATE,
    so two workers can never push the agent over capacity.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent")
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="agents")
    languages = models.JSONField(default=list, blank=True, help_text='language codes, e.g. ["en", "de"]')
    capacity = models.PositiveSmallIntegerField(default=5, help_text="open cases at most")
    status = models.CharField(
        max_length=10, choices=AgentStatus.choices, default=AgentStatus.OFFLINE,
        help_text="Online: gets new cases from routing. Away (a break) and Offline: gets none, not even when "
                  "nobody is online (cases wait in the team's queue, which the agent still sees and may take "
                  "from); setting Away or Offline hands the cases they have not answered yet to an online "
                  "colleague, else back to the queue. Answered cases stay theirs.",
    )
    timezone = models.CharField(max_length=64, default="UTC")
    working_hours = models.JSONField(
        default=dict, blank=True,
        help_text='per weekday, e.g. {"mon": ["09:00", "17:00"], ...}; empty = always',
    )
    last_assigned_at = models.DateTimeField(null=True, blank=True, help_text="tie-break: longest idle first")
    history = HistoricalRecords(excluded_fields=["last_assigned_at"])

    class Meta:
        ordering = ["user__username"]

    def __str__(self) -> str:
        return self.user.get_full_name() or self.user.get_username()

    def clean(self) -> None:
        errors = {}
        if not isinstance(self.languages, list) or not all(isinstance(x, str) for x in self.languages):
            errors["languages"] = 'a list of language codes, e.g. ["en", "de"]'
        if not isinstance(self.working_hours, dict) or any(
            day not in WEEKDAYS or _span(value) is None for day, value in self.working_hours.items()
        ):
            errors["working_hours"] = 'per weekday (mon..sun) a ["HH:MM", "HH:MM"] pair, e.g. {"mon": ["09:00", "17:00"]}'
        if errors:
            raise ValidationError(errors)

    def is_working(self, now: datetime) -> bool:
        """Within today's working hours in the agent's own timezone (no hours = always)."""
        if not self.working_hours:
            return True
        local = now.astimezone(customer_zone(self))
        span = _span(self.working_hours.get(WEEKDAYS[local.weekday()]))
        if not span:
            return False  # a day off (or hours that do not parse: never route on a guess)
        start, end = span
        return start <= local.time().replace(tzinfo=None) < end


def _span(value) -> tuple[time, ...] | None:
    """["09:00", "17:00"] -> (09:00, 17:00); an empty list is a day off (returned as ())."""
    if value in ([], None):
        return ()
    try:
        start, end = (time.fromisoformat(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (start, end) if start < end else None


class AgentSkill(models.Model):
    """Experience in one product category, 1 (basic) to 5 (expert); routing prefers higher."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="skills")
    category = models.SlugField(max_length=64)
    level = models.PositiveSmallIntegerField(default=3, choices=[(i, str(i)) for i in range(1, 6)])
    history = HistoricalRecords()

    class Meta:
        ordering = ["agent", "-level"]
        constraints = [models.UniqueConstraint(fields=["agent", "category"], name="agent_skill_unique")]

    def __str__(self) -> str:
        return f"{self.category}:{self.level}"
