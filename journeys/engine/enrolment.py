"""Enrolment in bulk: a whole audience enters a workflow with a few set-based statements.

Used by the time-driven triggers (cron over a segment, segment entry, date attributes,
inactivity windows) and by other apps through `runs_enroll_bulk` ("trigger a workflow for
these customers, with per-customer data"). For each page of customers:

1. canary share: each customer goes to the side of the workflow its stable bucket says
   (`canary_admits`), exactly as event entries do;
2. entry rules and the re-entry policy are checked against the customers' run history,
   loaded with one query (rules are evaluated only when the version has one);
3. the runs are inserted with one `INSERT ... SELECT FROM jsonb_to_recordset ...
   ON CONFLICT DO NOTHING RETURNING` (PostgreSQL; a bulk INSERT on SQLite). The database
   refuses a second run for the same trigger (`run_trigger_unique`) and a second open run
   (`one_open_run_per_customer`); `entries_admit` (journeys.engine.entry_gate) then applies the re-entry limit through
   the `EntryGate` rows (an upsert that only one of two concurrent enrolments can win), and
   the runs it refuses are deleted in the same transaction. No limit rests on a check made
   before an insert;
4. runs are inserted not yet started (waiting, no current step). Those inside the version's
   business hours are due at once and handed to the event workers, one q2 task per batch of
   up to `START_BATCH` runs, which start them through the batch engine (`journeys.engine.wakeups`);
   the others wait for the window to open and are woken by the tick like any due run.

Everything happens in the caller's transaction; the start tasks are part of it (the ORM
broker's task rows commit with the runs) or sent after commit (Redis). A task that is lost
costs a short delay, not the entry: the runs are due, and the tick's wake-up claims them
once their lease (`wakeups.WAKE_LEASE`) has passed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from journeys.choices import RunStatus
from journeys.engine.batch import instance_new
from journeys.engine.business_hours import business_hours_next_open
from journeys.engine.compiled import CompiledVersion, canary_admits, load_version, routable_versions
from journeys.engine.entry_gate import entry_history, runs_insert
from journeys.engine.runner import entry_refusal
from journeys.engine.runtime import context_dict, customer_zone, event_dict, events_counter, profile_dict
from journeys.models import Customer, JourneyRun, WorkflowVersion
from journeys.rules import RuleContext

PAGE = 2000  # customers per INSERT (and per history query)


class VersionNotLive(ValueError):
    """The version takes no new entries (not live nor a canary, or its workflow is paused)."""


@dataclass(slots=True)
class Candidate:
    """One customer asking to enter: the trigger key makes the entry idempotent."""

    customer_id: int
    trigger_key: str
    event: Any = None  # the trigger event (an inactivity window's start), if any
    variables: dict | None = None  # initial run variables: journey.* in rules and templates


@dataclass
class EnrolmentResult:
    """What an enrolment did: runs made (`enrolled`), of which `waiting` until business hours
    open, and customers `skipped` (routed to the other side of a canary, refused by the entry
    rule or the re-entry policy, already entered for this trigger, or already in an open run)."""

    enrolled: int = 0
    waiting: int = 0
    skipped: int = 0
    run_ids: list[int] = field(default_factory=list)

    def add(self, other: EnrolmentResult) -> None:
        self.enrolled += other.enrolled
        self.waiting += other.waiting
        self.skipped += other.skipped
        self.run_ids.extend(other.run_ids)


def routing_of(version: CompiledVersion) -> tuple[int, int, bool] | None:
    """Canary routing of a version: (workflow id, percent, is the canary) or None without a canary."""
    row = WorkflowVersion.objects.filter(pk=version.id).values_list(
        "workflow__live_version_id", "workflow__canary_version_id", "workflow__canary_percent").first()
    if row is None or row[1] is None or row[0] is None:
        return None
    live_id, canary_id, percent = row
    return (version.workflow_id, percent, version.id == canary_id)


def runs_enroll_bulk(
    *,
    version: CompiledVersion | WorkflowVersion,
    customer_ids: Iterable[int],
    trigger_key: str,
    now: datetime,
    variables: dict[int, dict] | None = None,
) -> EnrolmentResult:
    """Enrol these customers in the version's workflow, set-based (see the module docstring).

    `version` is the live version (or the canary) of an active workflow; with a canary running,
    each customer enters the side their canary bucket picks, as with every other trigger.
    `trigger_key` identifies the occasion ("api:<request id>", "schedule:<moment>"): enrolling the
    same customers again with the same key does nothing. `variables` gives per-customer run
    variables ({customer id: {...}}), readable as `journey.*` by entry rules, steps and templates.
    Honours entry rules, the re-entry policy (enforced in the database), one open run per
    customer and the version's business hours; merged-away and erased profiles are skipped.
    Runs in the caller's transaction; raises VersionNotLive if the version takes no entries.
    """
    compiled = load_version(version.pk if isinstance(version, WorkflowVersion) else version.id)
    sides = {v.pk: v for v in routable_versions().filter(workflow_id=compiled.workflow_id).only("pk")}
    if compiled.id not in sides:
        raise VersionNotLive(f"version {compiled.id} takes no new entries (not live nor a canary of an active workflow)")
    variables = variables or {}
    ids = sorted({int(c) for c in customer_ids})
    live = set(Customer.objects.filter(pk__in=ids, merged_into__isnull=True, erased_at__isnull=True)
               .values_list("pk", flat=True)) if ids else set()
    result = EnrolmentResult(skipped=len(ids) - len(live))
    ids = [c for c in ids if c in live]
    routing = routing_of(compiled)
    versions = [compiled] if routing is None else [load_version(pk) for pk in sides]
    for side in versions:
        side_routing = routing_of(side)
        mine = [c for c in ids if canary_admits(side_routing, c)]
        candidates = [Candidate(customer_id=c, trigger_key=trigger_key, variables=variables.get(c)) for c in mine]
        for i in range(0, len(candidates), PAGE):
            result.add(enroll_candidates(version=side, candidates=candidates[i : i + PAGE], now=now))
    return result


def enroll_candidates(*, version: CompiledVersion, candidates: list[Candidate], now: datetime,
                      routing: tuple[int, int, bool] | None = None) -> EnrolmentResult:
    """Enrol one page of candidates in one version (the tick's entry point). With `routing`,
    candidates the canary share sends to the other side are skipped."""
    from journeys.engine.wakeups import WAKE_LEASE, wake_enqueue

    result = EnrolmentResult()
    if routing is not None:
        admitted = [c for c in candidates if canary_admits(routing, c.customer_id)]
        result.skipped += len(candidates) - len(admitted)
        candidates = admitted
    if not candidates:
        return result
    erased = set(Customer.objects.filter(pk__in=[c.customer_id for c in candidates], erased_at__isnull=False)
                 .values_list("pk", flat=True))
    if erased:  # a tombstone takes no new data, whichever trigger found it
        result.skipped += len(erased)
        candidates = [c for c in candidates if c.customer_id not in erased]
    customers = _customers_needed(version, candidates)
    history = entry_history(wanted=[(version, c.customer_id, c.trigger_key) for c in candidates], now=now)
    lease = now + WAKE_LEASE
    runs: list[JourneyRun] = []
    for cand in candidates:
        previous = history.get((version.workflow_id, cand.customer_id), [])
        if any(key == cand.trigger_key for key, _, _ in previous):
            continue
        customer = customers.get(cand.customer_id)
        ctx = _rule_context(cand, customer, now) if version.entry_rule else None
        if _refusal(version, ctx, now, [(status, created) for _, status, created in previous]):
            continue
        opens = None
        if version.business_hours and customer is not None:
            opens = business_hours_next_open(version.business_hours, now=now, zone=customer_zone(customer))
        runs.append(instance_new(JourneyRun, {
            "workflow_id": version.workflow_id, "version_id": version.id, "customer_id": cand.customer_id,
            "trigger_key": cand.trigger_key, "trigger_event_id": getattr(cand.event, "pk", None),
            "status": RunStatus.WAITING, "exclusive": not version.allow_concurrent_runs, "current_step": "",
            "next_wake_at": opens or lease, "variables": dict(cand.variables or {}), "visits": {},
        }))
    inserted = runs_insert(runs=runs, versions={version.id: version}, now=now)
    result.skipped += len(candidates) - len(inserted)
    result.enrolled += len(inserted)
    result.run_ids.extend(r.pk for r in inserted)
    due = [r.pk for r in inserted if r.next_wake_at == lease]
    result.waiting += len(inserted) - len(due)
    wake_enqueue(run_ids=due, lease=lease, now=now)
    return result


def _customers_needed(version: CompiledVersion, candidates: list[Candidate]) -> dict[int, Customer]:
    """Customer rows only when an entry rule reads the profile or business hours need the timezone."""
    if not (version.entry_rule or version.business_hours):
        return {}
    return {c.pk: c for c in Customer.objects.filter(pk__in=[c.customer_id for c in candidates])}


def _rule_context(cand: Candidate, customer: Customer | None, now: datetime) -> RuleContext:
    return RuleContext(
        event=event_dict(cand.event), profile=profile_dict(customer, now) if customer is not None else {},
        context=context_dict(cand.event, now), journey=dict(cand.variables or {}), now=now,
        events_in_last=events_counter(cand.customer_id),
    )


def _refusal(version: CompiledVersion, ctx: RuleContext | None, now: datetime, previous: list) -> str | None:
    return entry_refusal(version=version, customer=None, ctx=ctx or RuleContext(now=now), now=now, previous=previous)
