"""Dry runs: what a version would do for a customer and an event, with no side effects.

Uses the same step kinds as the engine, with `dry_run=True` (action kinds
describe what they would send) and a simulated clock that jumps over delays.
Nothing is written to the database.

A cron broadcast and a date trigger start their runs with no event, so their dry run needs a
customer only: it checks what the engine checks for them (the segment, the customer's next
date) and walks from there. A segment-entry run may start from the event that changed the
profile or from the hourly refresh (no event): the event is optional.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace

from django.utils import timezone

from journeys.choices import TriggerKind
from journeys.engine.dates import DateRule, occurrence_next, zone_named
from journeys.engine.compiled import CompiledVersion, compile_version
from journeys.engine.runner import MAX_STEPS_PER_ADVANCE, entry_refusal, rule_true
from journeys.engine.runtime import StepContext, context_dict, event_dict, events_counter, profile_dict
from journeys.models import Customer, WorkflowVersion
from journeys.rules import RuleContext


TRIGGERS_WITHOUT_EVENT = (TriggerKind.SCHEDULE, TriggerKind.DATE_ATTRIBUTE)  # their runs start with no event
TRIGGERS_EVENT_OPTIONAL = (TriggerKind.SEGMENT_ENTRY,)  # the profile change's event, or none (the refresh)


@dataclass
class DryRunReport:
    entered: bool
    reason: str = ""
    path: list[dict] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)
    end: str = ""
    converted: bool = False
    entry: str = ""  # how and when the customer enters, for triggers without an event

    def as_dict(self) -> dict:
        return {"entered": self.entered, "reason": self.reason, "path": self.path, "actions": self.actions,
                "end": self.end, "converted": self.converted, "entry": self.entry}


def _trigger_audience(compiled: CompiledVersion, customer: Customer, now: datetime) -> tuple[str, str, datetime]:
    """What the engine checks before a trigger without an event enrols the customer:
    (why not, or "", how and when they enter, the moment the run would start)."""
    config = compiled.trigger_config or {}
    if compiled.trigger_kind in (TriggerKind.SCHEDULE, TriggerKind.SEGMENT_ENTRY):
        rule = config.get("segment" if compiled.trigger_kind == TriggerKind.SCHEDULE else "rule", "") or ""
        # what a segment walk sees of one customer (journeys.services.segments.customer_rule_contexts),
        # evaluated here: importing the segments module would close a circle through governance
        seen = RuleContext(profile=profile_dict(customer, now), now=now, events_in_last=events_counter(customer.pk))
        if rule.strip() and not rule_true(rule, seen)[0]:
            return f"not in the trigger's segment ({rule})", "", now
        members = f"in the segment ({rule})" if rule.strip() else "everyone is in the audience"
        if compiled.trigger_kind == TriggerKind.SCHEDULE:
            return "", f"{members}: enters at each cron moment ({config.get('cron', '')} UTC); walked as if now", now
        return "", f"{members}: enters on coming into it; walked as if now", now
    if compiled.trigger_kind == TriggerKind.DATE_ATTRIBUTE:
        try:
            rule = DateRule.of(config)
        except ValueError as exc:
            return f"the trigger's settings: {exc}", "", now
        value = (customer.traits or {}).get(rule.attribute)
        zone = zone_named(customer.timezone)
        upcoming = occurrence_next(value, rule=rule, zone=zone, from_date=now.astimezone(zone).date())
        if upcoming is None:
            return f"no upcoming date in {rule.attribute} (it is {value!r})", "", now
        local, due, _ = upcoming
        return "", f"enters on {local} at {rule.at:%H:%M} {zone.key} ({rule.attribute} {value}); walked from then", \
            max(now, due)
    return "", "", now


def version_dry_run(
    *,
    version: WorkflowVersion | CompiledVersion,
    customer: Customer,
    event: dict | None = None,
    now: datetime | None = None,
    later_events: list[str] | None = None,
    check_entry: bool = True,
) -> DryRunReport:
    """Walk the version for this customer. `later_events` names events assumed to arrive
    while the run waits (a wait_for_event for one of them takes the 'event' branch)."""
    compiled = version if isinstance(version, CompiledVersion) else compile_version(version)
    now = now or timezone.now()
    refusal, entry, now = _trigger_audience(compiled, customer, now)
    if refusal:
        return DryRunReport(entered=False, reason=refusal)
    event = event or {}
    if isinstance(event, dict):
        event = {"name": event.get("name") or event.get("event", ""), "type": event.get("type", "track"),
                 "properties": event.get("properties") or {}, "context": event.get("context") or {},
                 "traits": event.get("traits") or {}, "timestamp": now}
    profile = profile_dict(customer, now)
    rctx = RuleContext(event=event_dict(event), profile=profile, context=context_dict(event, now), journey={},
                       now=now, events_in_last=events_counter(customer.pk))
    if compiled.trigger_kind == TriggerKind.EVENT and event_dict(event).get("name") != compiled.trigger_event:
        return DryRunReport(entered=False, reason=f"the trigger waits for {compiled.trigger_event!r}")
    if not rule_true(compiled.trigger_config.get("filter", ""), rctx)[0]:
        return DryRunReport(entered=False, reason="the trigger filter is false")
    if check_entry and (why := entry_refusal(version=compiled, customer=customer, ctx=rctx, now=now)):
        return DryRunReport(entered=False, reason=why)

    report = DryRunReport(entered=True, entry=entry)
    run = SimpleNamespace(pk="dry", variables={}, visits={compiled.entry_step: 1}, converted_at=None)
    key, clock, pending = compiled.entry_step, now, list(later_events or [])
    for _ in range(MAX_STEPS_PER_ADVANCE):
        step = compiled.steps.get(key)
        if step is None:
            report.end = f"failed: step {key!r} missing"
            break
        ctx = StepContext(run=run, customer=customer, event=event, step_key=key, step_name=step.name,
                          config=step.config, visit=run.visits.get(key, 1), now=clock, dry_run=True,
                          workflow_id=compiled.workflow_id, version_id=compiled.id, profile=profile,
                          events_in_last=events_counter(customer.pk))
        try:
            result = step.kind.execute(ctx)
        except Exception as exc:
            report.path.append({"step": key, "kind": step.kind.kind, "outcome": "error", "error": str(exc), "at": clock.isoformat()})
            report.end = "failed"
            break
        outcome = result.outcome or result.end_status
        if result.wait_until is not None:
            if result.wait_event and result.wait_event in pending:
                pending.remove(result.wait_event)
                outcome = "event"
            else:
                outcome = "timeout" if result.wait_event else "next"
                clock = max(clock, result.wait_until)
        entry = {"step": key, "kind": step.kind.kind, "outcome": outcome, "at": clock.isoformat()}
        if result.detail:
            entry["detail"] = result.detail
        errors = [e for e in (result.error, *ctx.notes.get("rule_errors", [])) if e]
        if errors:
            entry["error"] = "; ".join(errors)
        report.path.append(entry)
        if step.kind.side_effects and result.detail:
            report.actions.append({"step": key, "kind": step.kind.kind, **result.detail})
        if result.end_status:
            report.end = result.end_status
            break
        target = step.edges.get(outcome or "next")
        if target is None:
            report.end = "completed"
            break
        run.visits[target] = run.visits.get(target, 0) + 1
        key = target
    else:
        report.end = "failed: too many steps without a wait"
    report.converted = run.converted_at is not None
    return report
