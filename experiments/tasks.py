"""django-q2 tasks: thin wrappers that call the services."""

from __future__ import annotations

from experiments.services.bandits import bandits_update_all


def experiments_refresh() -> int:
    """Scheduled every 15 minutes: bandit weights, daily next-best-action retraining, auto-retirement."""
    return bandits_update_all()
