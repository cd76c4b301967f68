"""What /metrics tells a monitoring system (Prometheus text format), journeys' part: the event
outbox, the quarantine, the task queue and its workers, failed runs, safe mode. The channels
app adds its own families (deliveries waiting per channel, breakers) through `METRIC_READERS`.

Every figure comes from an index or a small table, so a scrape costs what is waiting now, not
the history (tests/console/test_metrics.py checks the plans on PostgreSQL): the outbox and the
failed events from their partial indexes, the quarantine from (status, received_at), failed
runs from the finished-runs index, tasks from the broker's queue table (acknowledged tasks are
deleted from it). Counts that could grow with a backlog stop at COUNT_CAP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.apps import apps
from django.conf import settings
from django.db.models import Min
from django.utils import timezone
from django.utils.module_loading import import_string

from journeys.choices import EventStatus, RunStatus
from journeys.console.selectors import QUARANTINE_COUNT_CAP, dashboard_quarantine, tasks_by_cluster
from journeys.models import Event, JourneyRun

COUNT_CAP = QUARANTINE_COUNT_CAP
# Families other apps add (a dotted path to `f(now) -> list[Family]`), read when the app is installed.
METRIC_READERS = ("channels_app.selectors.channel_metrics",)


@dataclass
class Family:
    """One metric: its name, help text, type and samples (labels, value)."""

    name: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)
    type: str = "gauge"

    def add(self, value: float | None, **labels: str) -> Family:
        if value is not None:
            self.samples.append((labels, value))
        return self


def _capped_count(queryset) -> int:
    return queryset.order_by()[:COUNT_CAP].count()


def _age(now: datetime, moment: datetime | None) -> float:
    return max(0.0, (now - moment).total_seconds()) if moment else 0.0


def _tasks(now: datetime) -> list[Family]:
    """Per q2 cluster (its queue's name): tasks waiting, taken by its workers, how long ago the oldest
    taken one was taken and how many were taken longer ago than a task may run (`tasks_by_cluster`).
    With the Redis broker only the waiting ones (Redis cannot say what workers took)."""
    queued = Family("journeys_tasks_queued", "Tasks waiting in the queue for a worker, per cluster.")
    running = Family("journeys_tasks_running", "Tasks the workers of a cluster have taken (ORM broker): running, "
                                               "or fetched ahead by a worker and waiting for it.")
    oldest = Family("journeys_tasks_running_oldest_age_seconds",
                    "How long ago the oldest task a cluster's workers took was taken; 0 when none (ORM broker).")
    stale = Family("journeys_tasks_stale", "Tasks taken longer ago than the cluster's task timeout: its workers are "
                                           "stuck or gone, or so far behind that the task will be handed out again.")
    conf = getattr(settings, "Q_CLUSTER", {}) or {}
    names = [conf.get("name", "default"), *(conf.get("ALT_CLUSTERS") or {})]
    clusters = tasks_by_cluster(now=now)
    if clusters is not None:
        for name in dict.fromkeys([*names, *clusters]):
            row = clusters.get(name) or {"waiting": 0, "taken": 0, "oldest_s": None, "stale": 0}
            queued.add(row["waiting"], cluster=name)
            running.add(row["taken"], cluster=name)
            oldest.add(row["oldest_s"] or 0, cluster=name)
            stale.add(row["stale"], cluster=name)
        return [queued, running, oldest, stale]
    try:
        from django_q.brokers import get_broker

        for name in names:
            queued.add(get_broker(list_key=name).queue_size(), cluster=name)
    except Exception:  # noqa: BLE001 - a broker that cannot tell: no sample (the scrape still answers)
        pass
    return [queued]


def _clusters() -> list[Family]:
    """The q2 clusters' own reports (each writes one every few seconds to the shared cache; its entry
    expires when it stops): only with a cache every process shares (Redis). Reincarnations count the
    workers q2's guard replaced (one that ran past its timeout, or died)."""
    backend = (getattr(settings, "CACHES", {}).get("default") or {}).get("BACKEND", "")
    if getattr(settings, "Q_BROKER", "orm") != "redis" and ("locmem" in backend or "dummy" in backend):
        return []
    try:
        from django_q.status import Stat

        stats = Stat.get_all()
    except Exception:  # noqa: BLE001 - the cache cannot tell: no sample
        return []
    reporting = Family("journeys_q_clusters_reporting", "q2 clusters whose report is in the shared cache now.")
    workers = Family("journeys_q_cluster_workers", "Worker processes of a q2 cluster, as it last reported.")
    reincarnated = Family("journeys_q_cluster_reincarnations",
                          "Workers of a q2 cluster its guard replaced (timed out or died) since it started.")
    reporting.add(len(stats))
    for stat in stats:
        labels = {"host": str(getattr(stat, "host", "")), "cluster_id": str(getattr(stat, "cluster_id", ""))}
        workers.add(len(getattr(stat, "workers", []) or []), **labels)
        reincarnated.add(getattr(stat, "reincarnations", 0) or 0, **labels)
    return [reporting, workers, reincarnated]


def journeys_metrics(*, now: datetime) -> list[Family]:
    from journeys.services.governance import safe_mode_active

    pending = Event.objects.filter(status=EventStatus.PENDING)
    outbox = {"n": _capped_count(pending), "oldest": pending.aggregate(oldest=Min("received_at"))["oldest"]}
    quarantine = dashboard_quarantine(now=now)
    by_source = Family("journeys_quarantine_refused_last_hour_by_source",
                       "Events refused into the quarantine in the last hour and not reviewed, per source.")
    for entry in quarantine["by_source"]:
        by_source.add(entry["n"], source=entry["source"])
    return [
        Family("journeys_events_pending",
               f"Events stored and not processed yet (the outbox; counted up to {COUNT_CAP}).").add(outbox["n"]),
        Family("journeys_events_oldest_pending_age_seconds",
               "Age of the oldest event not processed yet (0 when none).").add(round(_age(now, outbox["oldest"]), 1)),
        Family("journeys_events_failed", f"Events whose processing failed (counted up to {COUNT_CAP}).").add(
            _capped_count(Event.objects.filter(status=EventStatus.FAILED))),
        Family("journeys_quarantine_unreviewed",
               f"Quarantined events waiting for review (counted up to {COUNT_CAP}).").add(quarantine["unreviewed"]),
        Family("journeys_quarantine_refused_last_hour",
               "Events refused into the quarantine in the last hour and not reviewed.").add(quarantine["last_hour"]),
        by_source,
        Family("journeys_runs_failed_last_day", "Journey runs that failed in the last 24 hours.").add(
            JourneyRun.objects.filter(status=RunStatus.FAILED, finished_at__gte=now - timedelta(hours=24)).count()),
        Family("journeys_safe_mode", "1 while safe mode holds every message.").add(int(safe_mode_active())),
        *_tasks(now),
        *_clusters(),
    ]


def metrics_collect(*, now: datetime | None = None) -> list[Family]:
    """Every family: journeys' and those of the installed apps that add some."""
    now = now or timezone.now()
    families = journeys_metrics(now=now)
    for path in METRIC_READERS:
        if apps.is_installed(path.split(".", 1)[0]):
            families += import_string(path)(now=now)
    return families


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def metrics_text(families: list[Family]) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    lines = []
    for family in families:
        lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.type}"]
        for labels, value in family.samples:
            shown = ",".join(f'{key}="{_escaped(str(v))}"' for key, v in labels.items())
            lines.append(f"{family.name}{{{shown}}} {_number(value)}" if shown else f"{family.name} {_number(value)}")
    return "\n".join(lines) + "\n"
