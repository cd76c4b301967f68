"""Reads behind the operations console: the home dashboard, the workflow graph and Customer 360.

`journeys` is the core and imports none of the other apps: their rows (deliveries, circuit
breakers, consents, cases) are read through `django.apps.apps.get_model` inside the selector,
and a section whose app or model is absent is simply empty (`None`). Every selector takes the
user and shows only what that user may see.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db.models import Count, Max, Min, Q
from django.db.models.functions import TruncHour, TruncMinute
from django.utils import timezone

from journeys.choices import OPEN_RUN_STATUSES, EventStatus, QuarantineStatus, RunStatus, WorkflowStatus
from journeys.models import (
    Customer,
    CustomerMerge,
    Event,
    JourneyRun,
    MergeRefusal,
    QuarantinedEvent,
    Source,
    StageTransition,
    WorkflowVersion,
)
from journeys.selectors import (
    VIEW,
    runs_for_user,
    user_can,
    user_can_view_dashboard,
    workflows_for_user,
)

EVENT_MINUTES = 30  # the events-per-minute chart covers the last half hour
DELIVERY_HOURS = 24  # the messages chart covers the last day, per hour
# Delivery statuses grouped the way ops read them (strings: channels_app is not imported).
# A bounced message (the recipient's server refused the address) was not sent and did not fail on
# our side: it is a count of its own, as on the graph page and in /metrics.
SENT = ("sent", "delivered", "opened", "clicked")
FAILED = ("failed",)
BOUNCED = ("bounced",)
PENDING_DELIVERY = ("queued", "deferred", "sending")
CLOSED_CASE = ("resolved", "closed")
# Open cases by where they stand against their first-response SLA, most urgent first.
SLA_BUCKETS = (
    ("breached", "SLA breached"),
    ("due_15m", "due within 15 min"),
    ("due_1h", "due within 1 h"),
    ("on_track", "on track"),
    ("answered", "answered"),
)


def _model(app_label: str, model_name: str):
    """Another app's model, or None when the app (or the model) is not installed."""
    try:
        return apps.get_model(app_label, model_name)
    except LookupError:
        return None


def _may_view(user: Any, model) -> bool:
    opts = model._meta
    return bool(user.is_superuser or user.has_perm(f"{opts.app_label}.view_{opts.model_name}"))


# --------------------------------------------------------------------------- home dashboard


def dashboard_events_per_minute(*, now: datetime, minutes: int = EVENT_MINUTES) -> list[dict]:
    """Events received per minute over the last `minutes` minutes, oldest first, zeros included:
    `n` those customers' apps and pipelines sent, `product` those the product recorded itself
    (Message Sent, Case Resolved...: source `internal`), so a campaign's own sends do not pass for
    customer traffic. Read per source (a handful) as a range of the (source, received_at) index
    each: without the source the planner walks that whole index, every event ever received."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    internal = _internal_source_id()
    sources = list(Source.objects.values_list("pk", flat=True))
    rows = (
        Event.objects.filter(source_id__in=sources, received_at__gte=start, received_at__lt=end)
        .annotate(minute=TruncMinute("received_at", tzinfo=dt_timezone.utc))
        .values("minute")
        .annotate(n=Count("id", filter=~Q(source_id=internal)), product=Count("id", filter=Q(source_id=internal)))
        .order_by()
    )
    counts = {row["minute"]: row for row in rows if row["minute"]}
    buckets = []
    for i in range(minutes):
        at = start + timedelta(minutes=i)
        row = counts.get(at, {})
        buckets.append({"at": at, "label": f"{at:%H:%M}", "n": row.get("n", 0), "product": row.get("product", 0)})
    return buckets


def _internal_source_id() -> int:
    """The product's own event source (-1 before it exists: then every event is a customer's)."""
    from journeys.services.internal_events import INTERNAL_SOURCE

    return Source.objects.filter(name=INTERNAL_SOURCE).values_list("pk", flat=True).first() or -1


def dashboard_deliveries(*, now: datetime, hours: int = DELIVERY_HOURS) -> dict | None:
    """Messages of the last `hours` hours: totals by outcome and an hourly series; None without channels_app."""
    Delivery = _model("channels_app", "Delivery")
    if Delivery is None:
        return None
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    recent = Delivery.objects.filter(created_at__gte=start)
    by_status = dict(recent.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    totals = {
        "sent": sum(by_status.get(s, 0) for s in SENT),
        "suppressed": by_status.get("suppressed", 0),
        "failed": sum(by_status.get(s, 0) for s in FAILED),
        "bounced": sum(by_status.get(s, 0) for s in BOUNCED),
        "pending": sum(by_status.get(s, 0) for s in PENDING_DELIVERY),
    }
    empty = {"sent": 0, "suppressed": 0, "failed": 0, "bounced": 0}
    series: dict[Any, dict[str, int]] = defaultdict(lambda: dict(empty))
    rows = recent.annotate(hour=TruncHour("created_at", tzinfo=dt_timezone.utc)).values("hour", "status").annotate(n=Count("id"))
    for row in rows:
        group = "sent" if row["status"] in SENT else "failed" if row["status"] in FAILED else (
            "bounced" if row["status"] in BOUNCED else "suppressed" if row["status"] == "suppressed" else None)
        if group and row["hour"]:
            series[row["hour"]][group] += row["n"]
    hourly = []
    for i in range(hours):
        at = start + timedelta(hours=i)
        hourly.append({"at": at, "label": f"{at:%H}h", **series.get(at, empty)})
    return {"totals": totals, "hourly": hourly}


def dashboard_circuits() -> list[dict] | None:
    """Every channel with its circuit breaker state (a channel without a breaker row is closed)."""
    Channel = _model("channels_app", "Channel")
    if Channel is None:
        return None
    has_breaker = _model("channels_app", "ChannelBreaker") is not None
    channels = Channel.objects.order_by("name")
    if has_breaker:
        channels = channels.select_related("breaker", "fallback")
    rows = []
    for channel in channels:
        breaker = getattr(channel, "breaker", None) if has_breaker else None
        rows.append({
            "name": channel.name,
            "kind": channel.kind,
            "enabled": channel.enabled,
            "paused": channel.paused,
            "fallback": channel.fallback.name if channel.fallback_id else "",
            "state": breaker.state if breaker else "closed",
            "failures": breaker.consecutive_failures if breaker else 0,
            "opened_at": breaker.opened_at if breaker else None,
            "last_error": (breaker.last_error if breaker else "")[:200],
        })
    return rows


def _cluster_limits(key: str) -> tuple[int, int]:
    """(retry, timeout) in seconds of the q2 cluster whose queue is `key` (its name)."""
    conf = getattr(settings, "Q_CLUSTER", {}) or {}
    own = (conf.get("ALT_CLUSTERS") or {}).get(key) or {}
    return int(own.get("retry", conf.get("retry", 60))), int(own.get("timeout", conf.get("timeout") or 0))


def tasks_by_cluster(*, now: datetime) -> dict[str, dict] | None:
    """Per q2 cluster (the name its queue has): tasks waiting, tasks its workers have taken from the
    ORM broker (a taken task's lock is the moment taken plus the cluster's `retry`), how long ago the
    oldest was taken, and how many were taken longer ago than the cluster's task timeout: a worker
    running one would have been stopped by then, so the workers are stuck or gone, or so far behind
    that the task will be handed out again (frozen workers keep the tasks they took: the count alone
    looked busy). None with another broker. Reads the queue table (what is queued, not the history)."""
    OrmQ = _model("django_q", "OrmQ")
    if "orm" not in getattr(settings, "Q_CLUSTER", {}) or OrmQ is None:
        return None
    out = {}
    for row in OrmQ.objects.values("key").annotate(
            waiting=Count("id", filter=Q(lock__isnull=True) | Q(lock__lt=now)),
            taken=Count("id", filter=Q(lock__gte=now)), first=Min("lock", filter=Q(lock__gte=now))).order_by():
        retry, timeout = _cluster_limits(row["key"])
        age = max(0, int((now - (row["first"] - timedelta(seconds=retry))).total_seconds())) if row["first"] else None
        stale = 0
        if age is not None and timeout and age > timeout:
            stale = OrmQ.objects.filter(key=row["key"], lock__gte=now,
                                        lock__lt=now + timedelta(seconds=retry - timeout)).count()
        out[row["key"]] = {"waiting": row["waiting"], "taken": row["taken"], "oldest_s": age, "stale": stale}
    return out


def dashboard_queue(*, now: datetime) -> dict:
    """Tasks waiting in the q2 ORM broker and those taken (with the age of the oldest taken, and
    how many are older than a task may run: stuck workers), and the event outbox: how many and how old."""
    queued = in_progress = oldest_s = stale = None
    clusters = tasks_by_cluster(now=now)
    if clusters is not None:
        queued = sum(c["waiting"] for c in clusters.values())
        in_progress = sum(c["taken"] for c in clusters.values())
        oldest_s = max((c["oldest_s"] for c in clusters.values() if c["oldest_s"] is not None), default=None)
        stale = sum(c["stale"] for c in clusters.values())
    else:  # another broker (Redis): ask it; a broker that cannot tell shows "n/a"
        try:
            from django_q.brokers import get_broker

            queued = get_broker().queue_size()
        except Exception:  # noqa: BLE001 - the dashboard must open while the broker is down
            queued = None
    outbox = Event.objects.filter(status=EventStatus.PENDING).aggregate(n=Count("id"), oldest=Min("received_at"))
    oldest = outbox["oldest"]
    return {
        "queued": queued,
        "in_progress": in_progress,
        "running_oldest_s": oldest_s,
        "running_stale": stale,
        "pending_events": outbox["n"],
        "failed_events": Event.objects.filter(status=EventStatus.FAILED).count(),
        "oldest_pending_at": oldest,
        "oldest_pending_age_s": int((now - oldest).total_seconds()) if oldest else None,
    }


QUARANTINE_HOUR = timedelta(hours=1)
QUARANTINE_COUNT_CAP = 100_000  # the unreviewed events are counted up to this many ("100000+")


def dashboard_quarantine(*, now: datetime) -> dict:
    """Events refused into the quarantine and not reviewed yet: those of the last hour per source
    with their reason codes (a client release that breaks its events shows at once), and how many
    wait in all (counted up to QUARANTINE_COUNT_CAP). Both from quarantine_status_idx (status,
    received_at): they cost what was refused lately and what waits, not the history."""
    waiting = QuarantinedEvent.objects.filter(status=QuarantineStatus.QUARANTINED)
    by_source: dict[int, dict] = {}
    for row in (waiting.filter(received_at__gte=now - QUARANTINE_HOUR).values("source_id", "source__name", "code")
                .annotate(n=Count("id")).order_by()):
        entry = by_source.setdefault(row["source_id"], {"source": row["source__name"], "n": 0, "codes": {}})
        entry["n"] += row["n"]
        entry["codes"][row["code"]] = row["n"]
    unreviewed = waiting.order_by()[:QUARANTINE_COUNT_CAP].count()
    return {"last_hour": sum(e["n"] for e in by_source.values()), "unreviewed": unreviewed,
            "unreviewed_capped": unreviewed >= QUARANTINE_COUNT_CAP,
            "by_source": sorted(by_source.values(), key=lambda e: (-e["n"], e["source"]))}


def dashboard_cases(*, now: datetime) -> dict | None:
    """Open cases by where they stand against their first-response SLA, and by priority."""
    Case = _model("agents", "Case")
    if Case is None:
        return None
    open_cases = Case.objects.exclude(status__in=CLOSED_CASE)
    counts = open_cases.aggregate(
        breached=Count("id", filter=Q(sla_due_at__lt=now)),
        due_15m=Count("id", filter=Q(sla_due_at__gte=now, sla_due_at__lt=now + timedelta(minutes=15))),
        due_1h=Count("id", filter=Q(sla_due_at__gte=now + timedelta(minutes=15), sla_due_at__lt=now + timedelta(hours=1))),
        on_track=Count("id", filter=Q(sla_due_at__gte=now + timedelta(hours=1))),
        answered=Count("id", filter=Q(sla_due_at__isnull=True)),
    )
    priority_labels = {}
    priority_field = Case._meta.get_field("priority")
    if priority_field.choices:
        priority_labels = dict(priority_field.choices)
    by_priority = [
        {"priority": priority_labels.get(row["priority"], row["priority"]), "n": row["n"]}
        for row in open_cases.values("priority").annotate(n=Count("id")).order_by("-priority")
    ]
    buckets = [{"key": key, "label": label, "n": counts[key]} for key, label in SLA_BUCKETS]
    return {"total": sum(b["n"] for b in buckets), "buckets": buckets, "by_priority": by_priority,
            "unassigned": open_cases.filter(assigned_agent__isnull=True).count()}


def dashboard_workflows(*, user: Any, now: datetime | None = None) -> list[dict]:
    """Workflows with a live version the user may see, live or paused (a paused one is marked and
    keeps its row: its messages are held, not gone), with their open runs and, when the channels
    app is installed, their messages now: queued, held (by what), sending, the send rate over the
    last minutes and an ETA for the queued ones."""
    now = now or timezone.now()
    workflows = list(
        workflows_for_user(user, VIEW)
        .filter(live_version__isnull=False, status__in=(WorkflowStatus.ACTIVE, WorkflowStatus.PAUSED))
        .select_related("live_version", "canary_version", "business_unit")
        .order_by("name")
    )
    open_runs = open_runs_by_workflow(workflow_ids=[w.pk for w in workflows])
    for w in workflows:
        w.active, w.waiting = (open_runs.get((w.pk, status), 0) for status in OPEN_RUN_STATUSES)
    reader = _channels_reader(WORKFLOW_MESSAGES)
    messages = reader(workflow_ids=[w.pk for w in workflows], now=now) if reader else {}
    return [
        {"id": w.pk, "name": w.name, "unit": w.business_unit.name, "version_id": w.live_version_id,
         "status": w.status, "paused": w.status == WorkflowStatus.PAUSED,
         "version": w.live_version.number, "canary": (f"v{w.canary_version.number} at {w.canary_percent}%"
                                                      if w.canary_version_id else ""),
         "active": w.active, "waiting": w.waiting, "messages": _with_eta_label(messages.get(w.pk))}
        for w in workflows
    ]


def open_runs_by_workflow(*, workflow_ids: list[int]) -> dict[tuple[int, str], int]:
    """(workflow id, status) -> open runs: read from the open-runs index (run_open_idx), which
    holds only open runs, so the count costs what is open, not every run ever made."""
    rows = (JourneyRun.objects.filter(workflow_id__in=workflow_ids, status__in=OPEN_RUN_STATUSES)
            .values_list("workflow_id", "status").annotate(n=Count("*")).order_by())
    return {(workflow_id, status): n for workflow_id, status, n in rows}


# The channels app's reads of a workflow's messages (journeys does not import it).
WORKFLOW_MESSAGES = "channels_app.selectors.workflow_messages"
VERSION_MESSAGE_TOTALS = "channels_app.selectors.version_message_totals"


def _channels_reader(path: str):
    """A read of the channels app by its dotted path, or None when the app is not installed."""
    from django.utils.module_loading import import_string

    return import_string(path) if _model("channels_app", "Delivery") is not None else None


def duration_label(seconds: int) -> str:
    """An ETA as people say it: "< 1 min", "~12 min", "~2 h 5 min"."""
    if seconds < 60:
        return "< 1 min"
    minutes = round(seconds / 60)
    return f"~{minutes} min" if minutes < 60 else f"~{minutes // 60} h {minutes % 60} min"


def _with_eta_label(messages: dict | None) -> dict | None:
    if messages is None:
        return None
    if not messages["queued"] + messages["sending"]:
        label = "nothing due, all held" if messages["held"] else "done"
    elif messages["eta_s"] is None:
        label = f"unknown: nothing sent in the last {messages['window_min']} min"
    else:
        label = duration_label(messages["eta_s"])
    return {**messages, "eta_label": label}


@dataclass
class CountWindow:
    """Which runs the graph's counts cover: the newest of the version, started within
    COUNT_WINDOW and at most COUNT_RUNS_MAX of them (so the page costs the same after years)."""

    runs: int = 0
    since: datetime | None = None  # the first run counted
    capped: bool = False  # more runs started in the window than were counted


# The graph counts the version's recent runs, not its whole history: a broadcast version gains a
# million runs a day, and counting them all made the page cost grow with every run ever made.
COUNT_WINDOW = timedelta(days=7)
COUNT_RUNS_MAX = 20_000


def version_recent_runs(*, version: WorkflowVersion, now: datetime | None = None) -> CountWindow:
    """The runs the graph counts: the version's runs started since `since` (COUNT_WINDOW ago, or
    later when more than COUNT_RUNS_MAX started since: then the start of the newest of them).
    Read as a range of run_version_created_idx, so the page never reads older history."""
    since = (now or timezone.now()) - COUNT_WINDOW
    recent = JourneyRun.objects.filter(version=version, created_at__gte=since)
    edge = recent.order_by("-created_at").values_list("created_at", flat=True)[COUNT_RUNS_MAX - 1:COUNT_RUNS_MAX]
    capped = bool(edge)
    if capped:
        since = edge[0]
    return CountWindow(runs=JourneyRun.objects.filter(version=version, created_at__gte=since).count(),
                       since=since, capped=capped)


def workflow_messages_for(*, version: WorkflowVersion, now: datetime | None = None) -> dict | None:
    """What the graph page shows about a version's messages: every message of its runs by outcome
    ("x of y sent"), and its workflow's messages now (queued, held, sending, rate, ETA)."""
    live, totals = _channels_reader(WORKFLOW_MESSAGES), _channels_reader(VERSION_MESSAGE_TOTALS)
    if live is None or totals is None:
        return None
    now = now or timezone.now()
    window = version_recent_runs(version=version, now=now)
    return {"totals": totals(version_id=version.pk, since=window.since), "window": window,
            "now": _with_eta_label(live(workflow_ids=[version.workflow_id], now=now)[version.workflow_id])}


def dashboard_summary(*, user: Any, now: datetime | None = None) -> dict:
    """Everything the ops home shows, in one dict (the JSON endpoint serialises it as is)."""
    if not user_can_view_dashboard(user):
        raise PermissionError("the ops dashboard needs journeys.view_ops_dashboard")
    now = now or timezone.now()
    per_minute = dashboard_events_per_minute(now=now)
    internal = _internal_source_id()
    last_minute = Event.objects.filter(received_at__gte=now - timedelta(minutes=1)).aggregate(
        n=Count("id", filter=~Q(source_id=internal)), product=Count("id", filter=Q(source_id=internal)))
    runs = dict(
        runs_for_user(user).filter(status__in=OPEN_RUN_STATUSES)
        .values_list("status").annotate(n=Count("*")).values_list("status", "n").order_by()
    )
    # the finished-runs index: the failures of the last day, not every failure ever
    failed_runs = runs_for_user(user).filter(status=RunStatus.FAILED, finished_at__gte=now - timedelta(hours=24)).count()
    workflows = dashboard_workflows(user=user, now=now)
    return {
        "now": now,
        "workflows": workflows,
        "live_workflows": len(workflows),
        "paused_workflows": sum(1 for w in workflows if w["paused"]),
        "events": {"last_minute": last_minute["n"], "product_last_minute": last_minute["product"],
                   "per_minute": per_minute,
                   "avg_per_minute": round(sum(b["n"] for b in per_minute) / max(len(per_minute), 1), 1)},
        "runs": {"active": runs.get(RunStatus.ACTIVE, 0), "waiting": runs.get(RunStatus.WAITING, 0),
                 "failed_24h": failed_runs},
        "deliveries": dashboard_deliveries(now=now),
        "circuits": dashboard_circuits(),
        "queue": dashboard_queue(now=now),
        "quarantine": dashboard_quarantine(now=now) if _may_view(user, QuarantinedEvent) else None,
        "cases": dashboard_cases(now=now),
    }


# --------------------------------------------------------------------------- versions


def version_for_user(*, user: Any, pk: int) -> WorkflowVersion | None:
    version = WorkflowVersion.objects.select_related("workflow").filter(pk=pk).first()
    if version is None or not user_can(user, VIEW, version.workflow):
        return None
    return version


# --------------------------------------------------------------------------- customer 360


def customer_360(*, customer: Customer, user: Any, limit: int = 50) -> dict:
    """One customer across the apps: profile, identities and merges, consents with their
    history, events, messages, journey runs and cases. A section is None when its app is
    absent or the user may not view it."""
    data: dict[str, Any] = {"customer": customer, "limit": limit}
    data["identities"] = list(customer.identities.order_by("kind", "value"))
    data["absorbed"] = list(Customer.objects.filter(merged_into=customer).order_by("-updated_at")[:limit])
    data["merges"] = list(
        CustomerMerge.objects.filter(Q(target=customer) | Q(merged=customer)).select_related("merged", "target")
        .order_by("-merged_at")[:limit]
    )
    data["merge_refusals"] = list(
        MergeRefusal.objects.filter(Q(customer=customer) | Q(other=customer)).order_by("-refused_at")[:limit])
    data["stages"] = list(StageTransition.objects.filter(customer=customer).order_by("-at")[:limit])
    events = Event.objects.filter(customer=customer).select_related("source")
    data["event_count"] = events.count()
    data["events"] = list(events.order_by("-timestamp", "-id")[:limit]) if _may_view(user, Event) else None
    data["event_names"] = list(events.values("name").exclude(name="").annotate(n=Count("id"), last=Max("timestamp"))
                               .order_by("-n")[:10])
    runs = JourneyRun.objects.filter(customer=customer, workflow__in=workflows_for_user(user, VIEW))
    data["runs"] = list(runs.select_related("workflow", "version").order_by("-created_at")[:limit])
    data["consents"] = data["consent_history"] = data["deliveries"] = data["cases"] = None
    data["delivery_counts"] = {}

    Consent = _model("channels_app", "Consent")
    if Consent is not None and _may_view(user, Consent):
        data["consents"] = list(Consent.objects.filter(customer=customer).select_related("topic")
                                .order_by("channel_kind", "topic__slug"))
        history = getattr(Consent, "history", None)
        if history is not None:
            data["consent_history"] = list(history.model.objects.filter(customer_id=customer.pk)
                                           .select_related("topic", "history_user").order_by("-history_date")[:limit])
    Delivery = _model("channels_app", "Delivery")
    if Delivery is not None and _may_view(user, Delivery):
        deliveries = Delivery.objects.filter(customer=customer)
        data["deliveries"] = list(deliveries.select_related("channel", "template").order_by("-created_at", "-id")[:limit])
        data["delivery_counts"] = dict(deliveries.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    Case = _model("agents", "Case")
    if Case is not None and _may_view(user, Case):
        data["cases"] = list(Case.objects.filter(customer=customer).select_related("assigned_agent__user", "team",
                                                                                  "origin_workflow")
                             .order_by("-created_at")[:limit])
    data["activity"] = _activity(data, limit=limit)
    return data


def _activity(data: dict, *, limit: int) -> list[dict]:
    """One merged, newest-first stream of what happened to the customer across the apps."""
    items = []
    for e in data["events"] or []:
        items.append({"at": e.timestamp, "kind": "event", "title": e.name or e.type,
                      "detail": e.source.name, "obj": e})
    for d in data["deliveries"] or []:
        items.append({"at": d.sent_at or d.created_at, "kind": "message",
                      "title": f"{d.channel.name}: {d.subject or (d.template.name if d.template_id else '')}".strip(": "),
                      "detail": d.status + (f" ({d.reason})" if d.reason else ""), "obj": d})
    for r in data["runs"]:
        items.append({"at": r.created_at, "kind": "journey", "title": f"entered {r.workflow.name} v{r.version.number}",
                      "detail": r.status + (f" at {r.current_step}" if r.current_step else ""), "obj": r})
    for c in data["cases"] or []:
        items.append({"at": c.created_at, "kind": "case", "title": str(c), "detail": c.get_status_display(), "obj": c})
    for h in data["consent_history"] or []:
        items.append({"at": h.history_date, "kind": "consent",
                      "title": f"{h.channel_kind or 'all channels'} / {h.topic.name if h.topic_id else 'all topics'}",
                      "detail": f"{h.status} via {h.source}", "obj": h})
    for m in data["merges"]:
        items.append({"at": m.merged_at, "kind": "merge", "title": f"merged #{m.merged_id} into #{m.target_id}",
                      "detail": m.reason, "obj": m})
    items.sort(key=lambda i: i["at"] or timezone.now(), reverse=True)
    return items[:limit]



# --------------------------------------------------------------------------- rule editor


def rule_diagnose(*, text: str, version: WorkflowVersion | None = None, event: str = "",
                  profile_only: bool = False) -> dict:
    """What the rule editor shows while typing: ok, or the message the form would give on save and
    its position (the parser's, a constant call that always fails, and with `profile_only` a path
    a profile-only rule has no value for); for a rule that passes, the attributes it reads and
    warnings for those nobody has (the event catalog's schema, the profiles seen, the traits and
    variables the version's steps set)."""
    from journeys.rules import RuleSyntaxError, rule_checked

    if not text.strip():
        return {"ok": True, "empty": True, "references": [], "warnings": []}
    try:
        rule = rule_checked(text, profile_only=profile_only)
    except RuleSyntaxError as exc:
        return {"ok": False, "error": exc.message, "position": exc.position, "column": exc.column,
                "message": str(exc)}
    references = sorted(rule.references)
    return {"ok": True, "references": references,
            "warnings": _attribute_warnings(references, version, event) if version is not None else []}


def _attribute_warnings(references: list[str], version: WorkflowVersion, event: str) -> list[str]:
    from journeys.services.catalog import catalog_property_known
    from journeys.services.governance import _known_attributes

    known = _known_attributes(version)
    events = [e for e in (event, version.trigger_event, version.goal_event) if e]
    warnings = []
    for ref in references:
        parts = ref.replace("[", ".").split(".")
        if len(parts) < 2:
            continue
        if parts[0] == "profile" and parts[1] not in known["profile"]:
            warnings.append(f"{ref}: no customer has this attribute (a typo?)")
        elif parts[0] == "journey" and parts[1] not in known["journey"]:
            warnings.append(f"{ref}: no step of this version sets it")
        elif parts[0] == "event" and parts[1] == "properties" and len(parts) > 2:
            answers = [catalog_property_known(event_name=name, path=parts[2]) for name in events]
            if False in answers and True not in answers:
                warnings.append(f"{ref}: not in the event catalog's schema for {', '.join(events)}")
    return warnings


# --------------------------------------------------------------------------- background jobs


def jobs_for_user(user: Any):
    """Ops admins (who may view jobs) see every job; everyone else their own, of the kinds they may
    still start (an editor's replays of a unit they still edit): a role taken away takes the
    results of the jobs it started with it (exports hold personal data).

    Without their result and uploaded file (`job_result` reads the result): an export's result
    holds everything about a customer, up to a hundred megabytes, which a list or a progress
    poll must not read."""
    from journeys.models import Job, JobKind, WorkflowVersion
    from journeys.selectors import EDIT, REVIEW, user_has_global, workflows_for_user
    from journeys.services.jobs import DATA_JOB_PERM

    jobs = Job.objects.defer("result", "input_text")
    if user.is_superuser or user.has_perm("journeys.view_job"):
        return jobs
    if not user.is_active:
        return jobs.none()
    own = jobs.filter(created_by=user)
    kinds = [kind for kind in (JobKind.IMPORT_CUSTOMERS, JobKind.IMPORT_EVENTS, JobKind.EXPORT)
             if user.has_perm(DATA_JOB_PERM)]
    if user_has_global(user, REVIEW):
        return own.filter(kind__in=[*kinds, JobKind.REPLAY])
    # a replay of a version of a workflow they may still edit (job_check_allowed's rule, in a few queries)
    replays = dict(own.filter(kind=JobKind.REPLAY).values_list("pk", "params__version_id"))
    editable = set(WorkflowVersion.objects.filter(pk__in={v for v in replays.values() if isinstance(v, int)},
                                                  workflow__in=workflows_for_user(user, EDIT))
                   .values_list("pk", flat=True))
    return own.filter(Q(kind__in=kinds) | Q(pk__in=[pk for pk, v in replays.items() if v in editable]))


def job_result(job) -> dict:
    """The result the job page shows: an export's without the copy of the personal data (its size
    instead; the copy is downloaded), any other job's whole (counts, capped rejected rows, the
    replay report)."""
    from journeys.models import Job, JobKind
    from journeys.services.jobs import export_summaries

    if job.kind == JobKind.EXPORT:
        return export_summaries(Job.objects.filter(pk=job.pk)).get(job.pk, {})
    return job.result


def template_preview(*, user: Any, template: str, locale: str = "", customer_ref: str = "", event_name: str = "",
                     now: datetime | None = None) -> dict:
    """A send_message step's template rendered for a customer or the sample profile: the channels
    app's template_preview, the same service and permission rule as the admin's preview page.
    The customer's field is called `preview_customer` in the step form."""
    from django.utils.module_loading import import_string

    if _model("channels_app", "MessageTemplate") is None:
        return {"ok": False, "status": 403, "field": "template", "error": "you may not preview templates"}
    result = import_string("channels_app.services.preview.template_preview")(
        user=user, template=template, locale=locale, customer_ref=customer_ref, event_name=event_name, now=now)
    if result.get("field") == "customer":
        result["field"] = "preview_customer"
    return result
