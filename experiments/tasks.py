"""django-q2 tasks: thin wrappers that call the services."""

from __future__ import annotations

from experiments.services.bandits import bandits_update_all, bandits_update_due


def experiments_refresh() -> int:
    """Scheduled every 15 minutes: bandit weights, daily next-best-action retraining, auto-retirement."""
    return bandits_update_all()


def bandits_due() -> int:
    """Scheduled every minute: the bandits with `bandit_every` new assignments since their last update."""
    return bandits_update_due()
