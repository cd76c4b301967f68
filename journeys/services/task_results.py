"""django-q2's record of finished tasks (the admin's "Successful tasks"), kept bounded without a
cost on every task.

q2 prunes it itself when Q_CLUSTER["save_limit"] > 0, but its way (django_q.monitor.save_task)
locks and reads every kept success row each time any task finishes: with a limit of 1,000 that
is a 1,000-row SELECT ... FOR UPDATE per task, in the monitor of every cluster, which also
serialises the clusters' monitors on those rows. So our save_limit is 0 (q2 keeps, never prunes)
and the events housekeeping schedule trims the successes to the newest Q_SUCCESS_KEEP here, a
few set-based DELETEs every ten minutes. Failures stay as q2 keeps them (an operator's to see).
"""

from __future__ import annotations

import time

from django.conf import settings

BATCH = 5000


def task_results_prune(*, keep: int | None = None, budget_s: float = 10.0) -> int:
    """Delete successful task results beyond the newest `keep` (Q_SUCCESS_KEEP); returns how many."""
    from django_q.models import Success

    keep = settings.Q_SUCCESS_KEEP if keep is None else keep
    if keep < 0:
        return 0  # keep them all
    newest = Success.objects.order_by("-stopped", "-pk").values("pk")[:keep]
    older = Success.objects.exclude(pk__in=newest)
    deadline = time.monotonic() + budget_s
    deleted = 0
    while time.monotonic() < deadline:
        ids = list(older.values_list("pk", flat=True)[:BATCH])
        if not ids:
            break
        deleted += Success.objects.filter(pk__in=ids).delete()[0]
    return deleted
