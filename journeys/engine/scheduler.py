"""Time-driven work: wake due runs, fire inactivity windows, date and cron triggers.

New entries from date, inactivity and cron triggers follow a workflow's canary share
exactly as event entries do (`canary_admits`, the same stable bucket per customer);
runs already started, and inactivity windows already open, stay on their version.

Called by the `engine_tick` q2 schedule every minute (and by tests with a
chosen `now`). Rows are claimed with SELECT ... FOR UPDATE SKIP LOCKED on
PostgreSQL, so several workers can tick at once without doing anything twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from journeys.choices import RunStatus, TriggerKind, VersionState
from journeys.engine.compiled import canary_admits, load_version, routable_versions
from journeys.engine.cron import cron_matches, parse_cron
from journeys.engine.runner import run_enroll, run_resume, rule_true
from journeys.engine.runtime import customer_zone, profile_dict
from journeys.models import Customer, JourneyRun, TriggerState, TriggerWatch, WorkflowVersion
from journeys.rules import RuleContext

logger = logging.getLogger(__name__)
BATCH = 200


def _lock_kwargs() -> dict:
    return {"skip_locked": True} if connection.features.has_select_for_update_skip_locked else {}


def runs_wake_due(*, now: datetime | None = None, limit: int = 5000) -> int:
    """Resume waiting runs whose timer is due: a delay ends ('next'), a wait times out ('timeout')."""
    now = now or timezone.now()
    woken = 0
    while woken < limit:
        with transaction.atomic():
            runs = list(
                JourneyRun.objects.select_for_update(**_lock_kwargs())
                .filter(status=RunStatus.WAITING, next_wake_at__lte=now)
                .order_by("next_wake_at")[:BATCH]
            )
            for run in runs:
                outcome = "timeout" if run.wait_event else "next"
                try:
                    with transaction.atomic():
                        run_resume(run=run, outcome=outcome, now=now)
                except Exception as exc:  # never let one run stop the others
                    logger.exception("waking run %s failed", run.pk)
                    JourneyRun.objects.filter(pk=run.pk).update(
                        status=RunStatus.FAILED, error=f"wake failed: {exc}"[:4000], finished_at=now, next_wake_at=None
                    )
        woken += len(runs)
        if len(runs) < BATCH:
            break
    return woken


def watches_fire_due(*, now: datetime | None = None) -> int:
    """Inactivity windows that closed without the follow-up event: enrol the customer."""
    now = now or timezone.now()
    fired = 0
    while True:
        with transaction.atomic():
            watches = list(
                TriggerWatch.objects.select_for_update(of=("self",), **_lock_kwargs())
                .filter(due_at__lte=now, fired_at__isnull=True, cancelled_at__isnull=True)
                .select_related("customer", "start_event")[:BATCH]
            )
            serving = _serving({w.version_id for w in watches})
            for watch in watches:
                # Routed when the window opened (canary share): it enrols on that version while
                # the version still serves (live, or the workflow's canary).
                if watch.version_id in serving:
                    run_enroll(
                        version=load_version(watch.version_id),
                        customer=watch.customer,
                        trigger_key=f"inactivity:{watch.start_event_id}",
                        now=now,
                        event=watch.start_event,
                    )
                watch.fired_at = now
                watch.save(update_fields=["fired_at"])
        fired += len(watches)
        if len(watches) < BATCH:
            return fired


def _in_chunks(queryset, size: int = 500):
    """Customers page by page (by id), with no cursor held open between pages.

    django-q2's enqueue closes idle connections (close_old_connections), which would
    kill a server-side iterator mid-loop on SQLite; each page is read in full first.
    """
    last = 0
    while True:
        page = list(queryset.filter(pk__gt=last).order_by("pk")[:size])
        if not page:
            return
        yield from page
        last = page[-1].pk


def _serving(version_ids: set[int]) -> set[int]:
    """Which of these versions are live or a workflow's canary (paused workflows included)."""
    return set(WorkflowVersion.objects.filter(pk__in=version_ids).filter(
        Q(state=VersionState.LIVE) | Q(workflow__canary_version=F("pk"))).values_list("pk", flat=True))


def _routed(kind: str) -> list[tuple[int, tuple[int, int, bool] | None]]:
    """(version id, canary routing) of the versions taking new entries for this trigger kind:
    the live ones and canaries; routing is None unless the workflow has a canary."""
    rows = routable_versions().filter(trigger_kind=kind).values_list(
        "pk", "workflow_id", "workflow__canary_version_id", "workflow__canary_percent")
    return [(vid, None if canary_id is None else (wid, percent, vid == canary_id))
            for vid, wid, canary_id, percent in rows]


def _anniversary(value, local_date, offset_days: int, yearly: bool) -> bool:
    from datetime import date

    if isinstance(value, str):
        try:
            value = date.fromisoformat(value[:10])
        except ValueError:
            return False
    if not isinstance(value, date):
        return False
    target = local_date - timedelta(days=offset_days)
    if not yearly:
        return value == target
    if (value.month, value.day) == (2, 29) and target.month == 2 and target.day == 28:
        try:
            target.replace(day=29)
        except ValueError:
            return True  # celebrate Feb 29 birthdays on Feb 28 in common years
    return (value.month, value.day) == (target.month, target.day) and value.year < target.year


def date_triggers_run(*, now: datetime | None = None) -> int:
    """Date-attribute triggers (birthdays, anniversaries), in each customer's own timezone.

    trigger_config: {"attribute": "signup_date", "offset_days": 0, "at": "09:00", "yearly": true}.
    A customer enters once per local date (trigger key date:<local date>).
    """
    now = now or timezone.now()
    enrolled = 0
    for vid, routing in _routed(TriggerKind.DATE_ATTRIBUTE):
        version = load_version(vid)
        config = version.trigger_config
        attribute = config.get("attribute", "")
        hour, minute = (int(p) for p in config.get("at", "09:00").split(":"))
        customers = Customer.objects.filter(merged_into__isnull=True, traits__has_key=attribute)
        for customer in _in_chunks(customers):
            if not canary_admits(routing, customer.pk):
                continue
            local = now.astimezone(customer_zone(customer))
            if (local.hour, local.minute) < (hour, minute):
                continue
            if not _anniversary(customer.traits.get(attribute), local.date(), int(config.get("offset_days", 0)), config.get("yearly", True)):
                continue
            with transaction.atomic():
                if run_enroll(version=version, customer=customer, trigger_key=f"date:{local.date().isoformat()}", now=now):
                    enrolled += 1
    return enrolled


def schedules_run(*, now: datetime | None = None) -> int:
    """Cron triggers over a segment: {"cron": "0 9 * * 1", "segment": "profile.plan == 'pro'"} (UTC)."""
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    enrolled = 0
    for vid, routing in _routed(TriggerKind.SCHEDULE):
        version = load_version(vid)
        fields = parse_cron(version.trigger_config.get("cron", ""))
        with transaction.atomic():
            state, _ = TriggerState.objects.select_for_update().get_or_create(version_id=version.id)
            start = state.last_tick_at or (now - timedelta(minutes=1))
            ticks, moment = [], start + timedelta(minutes=1)
            while moment <= now and len(ticks) < 1440:  # at most a day of catch-up
                if cron_matches(fields, moment):
                    ticks.append(moment)
                moment += timedelta(minutes=1)
            state.last_tick_at = now
            state.save()
        for tick in ticks:
            segment = version.trigger_config.get("segment", "")
            for customer in _in_chunks(Customer.objects.filter(merged_into__isnull=True)):
                if not canary_admits(routing, customer.pk):
                    continue
                if not rule_true(segment, RuleContext(profile=profile_dict(customer, now), now=now))[0]:
                    continue
                with transaction.atomic():
                    if run_enroll(version=version, customer=customer, trigger_key=f"schedule:{tick.isoformat()}", now=now):
                        enrolled += 1
    return enrolled


def stages_refresh(*, now: datetime | None = None) -> int:
    """Re-evaluate rule-defined lifecycle stages for everyone, set-based (time passes: 'inactive for 30 days')."""
    from journeys.services.lifecycle import customer_stages_refresh

    return customer_stages_refresh(now=now or timezone.now())


def engine_tick(*, now: datetime | None = None) -> dict:
    """Everything time-driven, once. Safe to run concurrently on several workers."""
    from journeys.engine.processor import events_sweep

    now = now or timezone.now()
    return {
        "swept": events_sweep(),
        "woken": runs_wake_due(now=now),
        "inactivity": watches_fire_due(now=now),
        "date": date_triggers_run(now=now),
        "schedule": schedules_run(now=now),
        "stages": stages_refresh(now=now) if now.minute == 0 else 0,  # hourly
    }
