from __future__ import annotations

from django.db import models


class RateCounter(models.Model):
    """One fixed rate-limit window of one key (a source, an API token...): how many hits it took.

    Counted with one atomic upsert (`INSERT ... ON CONFLICT DO UPDATE SET hits = hits + 1
    RETURNING hits`), so every web process shares the count; see journeys.services.ratelimit.
    Used only when no Redis is configured. Old windows are deleted as new ones start.
    """

    key = models.CharField(max_length=200)
    window_start = models.BigIntegerField(help_text="start of the window, seconds since the epoch")
    window_end = models.BigIntegerField(help_text="end of the window, seconds since the epoch")
    hits = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["key", "window_start"], name="rate_counter_key_window")]
        indexes = [models.Index(fields=["window_end"], name="rate_counter_end_idx")]

    def __str__(self) -> str:
        return f"{self.key}@{self.window_start}: {self.hits}"
