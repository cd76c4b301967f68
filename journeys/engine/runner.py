"""Runs: enrolment, executing steps until a wait, resuming on events and timers.

Every visit of a run to a step is one StepExecution row, unique per (run,
step, visit). A retried task finds the finished row and reuses its outcome,
so a step's side effect happens once however often the task runs.
"""

from __future__ import annotations

import logging
import traceback
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, OuterRef, TextField

from journeys.choices import OPEN_RUN_STATUSES, ReentryPolicy, RunStatus, StreamEventType
from journeys.engine.batch import IdMap, answers_record, batch_suspended, current_batch, ids_q, rows_move
from journeys.engine.compiled import CompiledVersion, load_version
from journeys.engine.entry_gate import entries_admit, entry_history
from journeys.engine.runtime import StepContext, events_counter, profile_dict
from journeys.models import Customer, JourneyRun, StepExecution, TriggerWatch
from journeys.rules import RuleContext, compile_rule
from journeys.services.stream import stream_run_converted, stream_run_progress, stream_runs_ended, stream_wanted

logger = logging.getLogger(__name__)

MAX_STEPS_PER_ADVANCE = 200


class RunFailed(Exception):
    pass


class _Refused(Exception):
    """Rolls back a run the entry gate refused."""


def rule_true(text: str, ctx: RuleContext) -> tuple[bool, str | None]:
    if not text:
        return True, None
    result = compile_rule(text).evaluate(ctx)
    return result.value, result.error


def entry_refusal(
    *, version: CompiledVersion, customer: Customer, ctx: RuleContext, now: datetime, previous: list | None = None
) -> str | None:
    """Why this customer may not enter now (None = may enter). Shared with dry runs."""
    ok, error = rule_true(version.entry_rule, ctx)
    if not ok:
        return f"entry rule is false{f' ({error})' if error else ''}"
    if previous is None:
        rows = entry_history(wanted=[(version, customer.pk, None)], now=now)[(version.workflow_id, customer.pk)]
        previous = [(status, created) for _, status, created in rows]
    if version.reentry_policy == ReentryPolicy.ONCE and previous:
        return "already entered once (re-entry policy: once)"
    if version.reentry_policy == ReentryPolicy.COOLDOWN:
        since = now - timedelta(seconds=version.reentry_cooldown_s)
        if any(created >= since for _, created in previous):
            return f"entered within the cooldown of {version.reentry_cooldown_s}s"
    if not version.allow_concurrent_runs and any(status in (RunStatus.ACTIVE, RunStatus.WAITING) for status, _ in previous):
        return "already has an open run in this workflow"
    return None


def run_enroll(
    *,
    version: CompiledVersion,
    customer: Customer,
    trigger_key: str,
    now: datetime,
    event=None,
    rule_ctx: RuleContext | None = None,
    since: datetime | None = None,
) -> JourneyRun | None:
    """Start a run if entry rules, re-entry policy and concurrency allow; then execute it
    (`since`: as `run_execute`'s, the time of the event it starts on; None: now).

    Idempotent: the same (workflow, customer, trigger_key) never makes two runs. An erased
    profile (a tombstone) is never enrolled.
    """
    if customer.erased_at is not None:
        return None
    if rule_ctx is None:
        from journeys.engine.runtime import context_dict, event_dict

        rule_ctx = RuleContext(
            event=event_dict(event), profile=profile_dict(customer, now), context=context_dict(event, now),
            journey={}, now=now, events_in_last=events_counter(customer.pk),
        )
    # One query answers idempotency (same trigger), re-entry and the open-run rule.
    rows = entry_history(wanted=[(version, customer.pk, trigger_key)], now=now)[(version.workflow_id, customer.pk)]
    if any(key == trigger_key for key, _, _ in rows):
        return None
    previous = [(status, created) for _, status, created in rows]
    if entry_refusal(version=version, customer=customer, ctx=rule_ctx, now=now, previous=previous):
        return None
    try:
        with transaction.atomic():
            run = JourneyRun.objects.create(
                workflow_id=version.workflow_id,
                version_id=version.id,
                customer=customer,
                trigger_key=trigger_key,
                trigger_event=event if event is not None and not isinstance(event, dict) else None,
                exclusive=not version.allow_concurrent_runs,
                current_step=version.entry_step,
                visits={version.entry_step: 1} if version.entry_step else {},
            )
            if entries_admit(runs=[run], versions={version.id: version}, now=now):
                raise _Refused  # the re-entry limit, as the database enforces it (a concurrent entry won)
    except (IntegrityError, _Refused):
        return None  # a concurrent worker enrolled them first
    run_execute(run=run, version=version, customer=customer, event=event, now=now, since=since)
    return run


def event_time(event) -> datetime | None:
    """When a stored event happened (its timestamp), None for no event or a dry run's dict: the
    moment a run moving on that event reaches its steps, in the customer's own time."""
    return getattr(event, "timestamp", None) if event is not None and not isinstance(event, dict) else None


def _context(run, version: CompiledVersion, customer, event, now: datetime, step_key: str, dry_run: bool,
             profile: dict | None = None, since: datetime | None = None) -> StepContext:
    step = version.steps[step_key]
    return StepContext(
        run=run,
        customer=customer,
        event=event,
        step_key=step_key,
        step_name=step.name,
        config=step.config,
        visit=run.visits.get(step_key, 1),
        now=now,
        dry_run=dry_run,
        workflow_id=version.workflow_id,
        version_id=version.id,
        profile=profile if profile is not None else profile_dict(customer, now),
        events_in_last=events_counter(getattr(customer, "pk", None)),
        since=since,
    )


def _finish(run: JourneyRun, status: str, now: datetime, error: str = "") -> None:
    run.status = status
    run.finished_at = now
    run.next_wake_at = None
    run.wait_event = ""
    run.error = error[:4000]


def runs_merge(*, pairs: list[tuple[Customer, Customer]], now: datetime) -> dict[int, int]:
    """Absorbed profiles' runs go on as their survivors' (a cart run begun on a device waits for
    the purchase the signed-in customer makes), for many (merged, target) pairs at once, each
    customer in at most one pair (a wave of `customer_waves`). Where both are on one journey, the
    survivor's run goes on and the absorbed one ends (one open run per customer); a run whose
    trigger the survivor also entered stays, ended, with the absorbed profile. Open inactivity
    windows move too. A fixed number of statements whatever the number of pairs. Returns how
    many runs moved, per absorbed customer id.

    A run a survivor enters while this runs (another worker's batch) makes the move break the
    one-open-run or one-run-per-trigger constraint once that batch commits: the move is then
    undone to its savepoint and done again, and sees that run."""
    attempts = 3
    while True:
        attempts -= 1
        try:
            with transaction.atomic():
                return _runs_merge(pairs=pairs, now=now)
        except IntegrityError:
            if not attempts:
                raise


def _runs_merge(*, pairs: list[tuple[Customer, Customer]], now: datetime) -> dict[int, int]:
    survivors = {merged.pk: target.pk for merged, target in pairs}
    if not survivors:
        return {}
    mine = JourneyRun.objects.filter(ids_q("customer_id", list(survivors)))
    # the survivor's runs, beside each absorbed run (its workflow)
    theirs = JourneyRun.objects.filter(customer_id=IdMap(OuterRef("customer_id"), survivors),
                                       workflow_id=OuterRef("workflow_id"))
    runs_end(mine.filter(Exists(theirs.filter(exclusive=True, status__in=OPEN_RUN_STATUSES)), exclusive=True),
             status=RunStatus.EXITED, now=now,
             error={m: f"merged into customer {t}, already on this journey" for m, t in survivors.items()})
    same_trigger = Exists(theirs.filter(trigger_key=OuterRef("trigger_key")))
    runs_end(mine.filter(same_trigger), status=RunStatus.EXITED, now=now,
             error={m: f"merged into customer {t}, who entered on the same trigger" for m, t in survivors.items()})
    moving = mine.exclude(same_trigger)
    moved = dict(moving.order_by().values_list("customer_id").annotate(n=Count("pk")))
    if moved:
        rows_move(moving, pairs)
    rows_move(TriggerWatch.objects.filter(fired_at__isnull=True, cancelled_at__isnull=True), pairs)
    return moved


def runs_end(runs, *, status: str, now: datetime, error: str | dict[int, str]) -> int:
    """End the open runs of a queryset with one UPDATE (another run's move ends them; a wake-up
    that broke fails one); returns how many. `error`: one message for all, or one per customer
    id (a merge of many profiles). The outbound stream hears of each (journey.exited),
    as of a run that ends on its own: the rows are read (and locked) first only when a
    destination wants that."""
    runs = runs.filter(status__in=(RunStatus.ACTIVE, RunStatus.WAITING))
    ended: list[JourneyRun] = []
    if stream_wanted(StreamEventType.JOURNEY_EXITED):
        ended = list(runs.select_for_update(of=("self",)).select_related("version").only(
            "workflow_id", "version__number", "customer_id", "current_step", "converted_at").order_by("pk"))
        if not ended:
            return 0
        runs = JourneyRun.objects.filter(pk__in=[r.pk for r in ended])
    # the step a run waits at is finished with the run (outcome: how it ended)
    batch = current_batch()
    if batch is not None:
        batch.close_held(runs, outcome=status, finished_at=now)
    StepExecution.objects.filter(run__in=runs.values("pk"), finished_at__isnull=True).update(
        outcome=status, finished_at=now)
    if isinstance(error, dict):
        text = IdMap(F("customer_id"), {k: v[:4000] for k, v in error.items()}, output_field=TextField())
    else:
        text = error[:4000]
    count = runs.update(status=status, finished_at=now, next_wake_at=None, wait_event="", error=text)
    for run in ended:
        _finish(run, status, now, error[run.customer_id] if isinstance(error, dict) else error)
    stream_runs_ended(runs=ended, now=now)
    return count


def _follow(run: JourneyRun, version: CompiledVersion, outcome: str, now: datetime) -> bool:
    """Move to the step the outcome leads to; False when the path ends (the run completes)."""
    target = version.steps[run.current_step].edges.get(outcome)
    if target is None:
        _finish(run, RunStatus.COMPLETED, now)
        return False
    run.current_step = target
    run.visits = {**run.visits, target: run.visits.get(target, 0) + 1}
    return True


def run_start(*, run: JourneyRun, version: CompiledVersion) -> None:
    """A run inserted not yet started (bulk enrolment: waiting, no current step) moves to the
    version's entry step; `run_execute` then runs it like a fresh enrolment."""
    run.status, run.next_wake_at, run.wait_event = RunStatus.ACTIVE, None, ""
    run.current_step = version.entry_step
    run.visits = {version.entry_step: 1} if version.entry_step else {}


def run_execute(
    *, run: JourneyRun, version: CompiledVersion, customer, event, now: datetime, resume_outcome: str | None = None,
    since: datetime | None = None,
) -> JourneyRun:
    """Execute steps until the run waits or ends. With `resume_outcome`, the current
    (waiting) step is finished with that outcome first (in an engine batch: with the
    batch's other resumed runs, at its flush). `since`: when the run moves, in the customer's
    own time (`StepContext.since`): the time of the event it moves on; for a timer, when it became
    due (a delay's end, a wait's deadline; None: now)."""
    batch = current_batch()
    if resume_outcome is not None:
        _close_waiting(run, resume_outcome, now,
                       answered_by=getattr(event, "pk", None) if resume_outcome == "event" else None)
        run.status, run.next_wake_at, run.wait_event = RunStatus.ACTIVE, None, ""
        if not _follow(run, version, resume_outcome, now):
            if batch is not None:
                batch.save_run(run)
            else:
                run.save()
            stream_run_progress(run=run, version=version, reached=[], now=now)
            return run
    profile = profile_dict(customer, now)
    reached: list[tuple[str, int, str, str]] = []  # for the outbound event stream
    for _ in range(MAX_STEPS_PER_ADVANCE):
        key = run.current_step
        if key not in version.steps:
            _finish(run, RunStatus.FAILED, now, f"step {key!r} does not exist in version {version.number}")
            break
        step = version.steps[key]
        visit = run.visits.get(key, 1)
        ctx = _context(run, version, customer, event, now, key, dry_run=False, profile=profile, since=since)
        isolated = step.kind.side_effects and not (batch is not None and step.kind.batch_safe)
        if isolated and batch is not None:
            batch.flush()  # the step may read (or lock) rows this batch has not written yet
        try:
            if isolated:  # a savepoint, so a failing action leaves no half-written rows; what the step
                # sets off (start_workflow: another run and its steps) writes inside it, not to the batch
                with transaction.atomic(), batch_suspended():
                    result = step.kind.execute(ctx)
            else:
                result = step.kind.execute(ctx)
        except Exception as exc:  # one failing step fails this run only
            logger.exception("step %s of run %s failed", key, run.pk)
            error = "".join(traceback.format_exception_only(exc)).strip()[:4000]
            _record(batch, run_id=run.pk, step_key=key, step_kind=step.kind.kind, visit=visit, outcome="error",
                    detail={}, error=error, started_at=now, finished_at=now)
            _finish(run, RunStatus.FAILED, now, f"step {key}: {error}")
            break
        # One INSERT per visit. The row commits together with the run's new position, so a
        # retried task never meets a visit it already made; the unique (run, step, visit)
        # constraint stops a concurrent duplicate outright.
        errors = [e for e in (result.error, *ctx.notes.get("rule_errors", [])) if e]
        finished = result.outcome is not None or bool(result.end_status)
        _record(
            batch, run_id=run.pk, step_key=key, step_kind=step.kind.kind, visit=visit,
            outcome=(result.outcome or result.end_status or "") if finished else "",
            detail={**result.detail, "waiting": True} if result.wait_until else result.detail,
            error="; ".join(dict.fromkeys(errors))[:4000] if errors else "",
            started_at=now, finished_at=now if finished else None,
        )
        reached.append((key, visit, step.kind.kind, (result.outcome or result.end_status or "") if finished else ""))
        if result.end_status:  # a step that fails its run (end_status failed) says why in `error`
            _finish(run, result.end_status, now,
                    f"step {key}: {result.error}" if result.end_status == RunStatus.FAILED and result.error else "")
            break
        if result.wait_until is not None:
            run.status = RunStatus.WAITING
            run.next_wake_at = result.wait_until
            run.wait_event = result.wait_event
            break
        if result.event is not None:  # a wait answered by a stored event: the steps after it read that event
            event, since = result.event, event_time(result.event)
        if not _follow(run, version, result.outcome or "next", now):
            break
    else:
        _finish(run, RunStatus.FAILED, now, f"more than {MAX_STEPS_PER_ADVANCE} steps without a wait (a cycle?)")
    if batch is not None:
        batch.save_run(run)
    else:
        run.save()
    stream_run_progress(run=run, version=version, reached=reached, now=now)
    return run


def _close_waiting(run: JourneyRun, outcome: str, now: datetime, *, answered_by: int | None = None) -> None:
    """Finish the row of the step the run waits at (in an engine batch: with the batch's others).
    `answered_by`: the event that answered a wait, recorded on its row (an event answers one wait
    of a run only: journeys.engine.waits)."""
    waiting = {"step_key": run.current_step, "visit": run.visits.get(run.current_step, 1)}
    batch = current_batch()
    if batch is not None:
        batch.close_step(run_id=run.pk, **waiting, outcome=outcome, finished_at=now, answered_by=answered_by)
    else:
        StepExecution.objects.filter(run=run, **waiting, finished_at__isnull=True).update(
            outcome=outcome, finished_at=now)
        if answered_by is not None:
            answers_record([(run.pk, waiting["step_key"], waiting["visit"], answered_by)])


def _record(batch, **row) -> None:
    """One row per visit: now, or (a plain row, no model instance) with the batch's single INSERT."""
    if batch is not None:
        batch.add_execution(row)
    else:
        StepExecution(**row).save(force_insert=True)


def run_resume(*, run: JourneyRun, outcome: str, now: datetime, event=None) -> JourneyRun:
    """Continue a waiting run (timer fired: 'next'/'timeout'; awaited event: 'event')."""
    version = load_version(run.version_id)
    customer = run.customer
    return run_execute(run=run, version=version, customer=customer, event=event, now=now, resume_outcome=outcome,
                       since=event_time(event))


def run_convert(*, run: JourneyRun, now: datetime) -> None:
    """The goal event arrived: the run ends as a conversion (a step it waited at: outcome "converted")."""
    if run.status == RunStatus.WAITING and run.current_step:
        _close_waiting(run, "converted", now)
    run.converted_at = run.converted_at or now
    _finish(run, RunStatus.COMPLETED, now)
    run.save()
    stream_run_converted(run=run, now=now)


def run_retry(*, run: JourneyRun, now: datetime) -> JourneyRun:
    """Retry a failed run from the step that failed (a new visit of that step)."""
    if run.status != RunStatus.FAILED:
        raise RunFailed(f"run {run.pk} is {run.status}, only failed runs can be retried")
    run.status, run.error, run.finished_at = RunStatus.ACTIVE, "", None
    run.visits = {**run.visits, run.current_step: run.visits.get(run.current_step, 1) + 1}
    try:
        with transaction.atomic():
            run.save()
    except IntegrityError:
        raise RunFailed("the customer has another open run in this workflow") from None
    return run_execute(run=run, version=load_version(run.version_id), customer=run.customer, event=run.trigger_event, now=now)
