"""django-q2 tasks: thin wrappers that call the services."""

from __future__ import annotations

from experiments.services.bandits import bandit_update_due, bandits_update_all


def experiments_refresh() -> int:
    """Scheduled every 15 minutes: bandit weights, daily next-best-action retraining, auto-retirement."""
    return bandits_update_all()


def bandit_update(experiment_id: int, now) -> int:
    """Queued by assignments (experiments.services.bandits.bandit_maybe_update): one bandit's weights."""
    return len(bandit_update_due(experiment_id=experiment_id, now=now))
