"""Which django-q2 cluster runs the q2 schedules (settings.Q_SCHEDULE_CLUSTER).

A schedule runs only on the cluster its `cluster` field names (django-q2: a null one runs on the
main cluster). After every `migrate`, which is also when apps add their schedules, each schedule
is put on the schedules cluster, so that the minute tick, the audit and the other periodic jobs
never take the event workers. Deployment plumbing, not business logic.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models import Q


def schedules_assign(**kwargs) -> int:
    """post_migrate receiver: every schedule onto Q_SCHEDULE_CLUSTER ("" = the main cluster)."""
    from django_q.models import Schedule

    target = getattr(settings, "Q_SCHEDULE_CLUSTER", "") or None
    using = kwargs.get("using") or "default"
    rows = Schedule.objects.using(using)
    if target is None:
        return rows.filter(cluster__isnull=False).update(cluster=None)
    return rows.filter(Q(cluster__isnull=True) | ~Q(cluster=target)).update(cluster=target)
