"""Turns stored events into journey progress (the `events_process` task)."""

from __future__ import annotations

import logging
import traceback
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from journeys.choices import EventStatus, RunStatus, TriggerKind
from journeys.engine.compiled import load_version, trigger_index
from journeys.engine.durations import parse_duration
from journeys.engine.runner import run_convert, run_enroll, run_resume, rule_true
from journeys.engine.runtime import context_dict, event_dict, events_counter, profile_dict
from journeys.models import Event, JourneyRun, TriggerWatch
from journeys.rules import RuleContext
from journeys.services.lifecycle import customer_evaluate_stage

STAGE_EVENTS = ("Stage Entered", "Stage Left")

logger = logging.getLogger(__name__)


def _skip_locked() -> dict:
    # SQLite serialises writers anyway and has no row locks.
    return {"skip_locked": True} if connection.features.has_select_for_update_skip_locked else {}


def events_process(*, event_ids: list[int]) -> int:
    """Process the given events that are still pending; returns how many were processed.

    One transaction per call: the events are locked (SKIP LOCKED, so the sweeper
    and a task never process the same event twice at once) and marked processed
    in the same commit as the runs they moved. Each event gets a savepoint, so a
    bug triggered by one event marks it failed and the others go on.
    """
    now = timezone.now()
    index = trigger_index()
    with transaction.atomic():
        events = list(
            Event.objects.select_for_update(of=("self",), **_skip_locked())
            .filter(pk__in=event_ids, status=EventStatus.PENDING)
            .select_related("customer")
            .order_by("timestamp", "id")
        )
        if not events:
            return 0
        # One Customer object per customer for the whole batch, so a later event sees
        # what an earlier one changed (select_related gives each event its own copy).
        shared: dict = {}
        for event in events:
            if event.customer_id:
                event.customer = shared.setdefault(event.customer_id, event.customer)
        customer_ids = set(shared)
        open_runs: dict[int, list[JourneyRun]] = defaultdict(list)
        # Locked: a timer waking the same run in another worker waits for us (and vice versa).
        for run in JourneyRun.objects.select_for_update(of=("self",)).filter(
            customer_id__in=customer_ids, status__in=[RunStatus.ACTIVE, RunStatus.WAITING]
        ):
            run.customer = shared[run.customer_id]
            open_runs[run.customer_id].append(run)
        processed, failed = [], []
        for event in events:
            try:
                with transaction.atomic():
                    event_route(event=event, open_runs=open_runs, index=index, now=now)
                processed.append(event.pk)
            except Exception as exc:
                logger.exception("event %s failed", event.pk)
                event.error = "".join(traceback.format_exception_only(exc)).strip()[:4000]
                failed.append(event)
        Event.objects.filter(pk__in=processed).update(status=EventStatus.PROCESSED, processed_at=now)
        for event in failed:
            Event.objects.filter(pk=event.pk).update(
                status=EventStatus.FAILED, processed_at=now, error=event.error, attempts=event.attempts + 1
            )
    return len(processed)


def event_route(*, event: Event, open_runs: dict, index, now) -> None:
    """Everything one event can do: convert, wake waiting runs, open/close inactivity windows, enrol."""
    customer = event.customer
    if customer is None:
        return
    runs = open_runs[customer.pk]
    rctx = RuleContext(
        event=event_dict(event), profile=profile_dict(customer, now), context=context_dict(event, now),
        journey={}, now=now, events_in_last=events_counter(customer.pk),
    )
    for run in list(runs):
        version = load_version(run.version_id)
        if version.goal_event and version.goal_event == event.name:
            if rule_true(version.goal_filter, replace(rctx, journey=run.variables))[0]:
                run_convert(run=run, now=now)
                runs.remove(run)
                continue
        if run.status == RunStatus.WAITING and run.wait_event and run.wait_event == event.name:
            step = version.steps.get(run.current_step)
            text = (step.config.get("filter") if step else "") or ""
            if rule_true(text, replace(rctx, journey=run.variables))[0]:
                run_resume(run=run, outcome="event", now=now, event=event)
                if run.status not in (RunStatus.ACTIVE, RunStatus.WAITING):
                    runs.remove(run)

    for vid in index.inactivity_stop.get(event.name, ()):
        TriggerWatch.objects.filter(
            version_id=vid, customer=customer, fired_at__isnull=True, cancelled_at__isnull=True,
            start_event__timestamp__lte=event.timestamp,
        ).update(cancelled_at=now)
    for vid in index.inactivity_start.get(event.name, ()):
        version = load_version(vid)
        if not rule_true(version.trigger_config.get("filter", ""), rctx)[0]:
            continue
        window = parse_duration(version.trigger_config.get("within", "1h"), field="within")
        TriggerWatch.objects.get_or_create(
            version_id=vid, start_event=event, defaults={"customer": customer, "due_at": event.timestamp + window}
        )

    for vid in index.by_event.get(event.name, ()):
        if not index.admits(vid, customer.pk):
            continue
        version = load_version(vid)
        if not rule_true(version.trigger_config.get("filter", ""), rctx)[0]:
            continue
        run = run_enroll(version=version, customer=customer, trigger_key=f"event:{event.pk}", now=now, event=event, rule_ctx=rctx)
        if run is not None and run.status in (RunStatus.ACTIVE, RunStatus.WAITING):
            runs.append(run)

    if event.changes:
        _profile_triggers(event=event, customer=customer, index=index, rctx=rctx, runs=runs, now=now)
    if event.name not in STAGE_EVENTS:
        customer_evaluate_stage(customer=customer, now=now, rule_ctx=rctx)


def _profile_triggers(*, event, customer, index, rctx, runs, now) -> None:
    """Attribute-change and segment-entry triggers, from the changes this event made."""
    old_traits = {**customer.traits, **{k: v[0] for k, v in event.changes.items()}}
    old_traits = {k: v for k, v in old_traits.items() if v is not None}
    for vid in index.profile_triggers:
        if not index.admits(vid, customer.pk):
            continue
        version = load_version(vid)
        config = version.trigger_config
        if version.trigger_kind == TriggerKind.ATTRIBUTE_CHANGE:
            attribute = config.get("attribute")
            if attribute not in event.changes:
                continue
            if "to" in config and event.changes[attribute][1] != config["to"]:
                continue
        else:
            rule = config.get("rule", "")
            old_profile = {**rctx.profile, **{k: None for k in event.changes}, **old_traits}
            was = rule_true(rule, replace(rctx, profile=old_profile))[0]
            now_in = rule_true(rule, rctx)[0]
            if was or not now_in:
                continue
        run = run_enroll(version=version, customer=customer, trigger_key=f"profile:{event.pk}", now=now, event=event, rule_ctx=rctx)
        if run is not None and run.status in (RunStatus.ACTIVE, RunStatus.WAITING):
            runs.append(run)


def events_sweep(*, older_than_s: int = 30, limit: int = 2000) -> int:
    """Find events that were stored but never processed (lost task, crashed worker)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    ids = list(
        Event.objects.filter(status=EventStatus.PENDING, received_at__lte=cutoff)
        .order_by("received_at")
        .values_list("id", flat=True)[:limit]
    )
    done = 0
    for i in range(0, len(ids), 200):
        done += events_process(event_ids=ids[i : i + 200])
    return done
