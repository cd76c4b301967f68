"""Turns stored events into journey progress (the `events_process` task)."""

from __future__ import annotations

import logging
import traceback
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from journeys.choices import EventStatus, RunStatus, TriggerKind
from journeys.engine.batch import (EngineBatch, batch_suspended, current_batch, customer_waves, instance_new,
                                   skip_locked)
from journeys.engine.entry_gate import entry_history, runs_insert
from journeys.engine.compiled import load_version, trigger_index
from journeys.engine.durations import parse_duration
from journeys.engine.listeners import STAGE_EVENTS
from journeys.engine import runner
from journeys.engine.runner import event_time, run_convert, run_enroll, run_execute, run_resume, rule_true
from journeys.engine.segment_entries import segment_members_settle
from journeys.engine.runtime import add_wait, context_dict, customer_zone, event_dict, events_counter, profile_dict
from journeys.engine.wakeups import WAKE_LEASE
from journeys.models import Customer, Event, JourneyRun, StepExecution, TriggerWatch
from journeys.rules import RuleContext
from journeys.services.lifecycle import customer_evaluate_stage, customers_stage_settle
from journeys.services.segments import PROFILE_FIELDS
from journeys.services.rechecks import customers_recheck

logger = logging.getLogger(__name__)



def events_process(*, event_ids: list[int]) -> int:
    """Process the given events that are still pending; returns how many were processed.

    One transaction per call: the events are locked (SKIP LOCKED, so the sweeper
    and a task never process the same event twice at once) and marked processed
    in the same commit as the runs they moved.

    The batch is processed set-based (`_process_set`): what it needs is loaded
    with one query per kind, runs are enrolled with one INSERT ... ON CONFLICT DO
    NOTHING per wave, and step executions, run states and deliveries are written
    in bulk, all under one savepoint. If anything escapes that (a bug, not a
    failing step: a step failure only fails its run), the savepoint is rolled
    back and the batch is replayed one event at a time, each in its own
    savepoint, so the culprit is marked failed and the others go on.
    """
    now = timezone.now()
    index = trigger_index()
    with transaction.atomic():
        events = _lock_events(event_ids)
        if not events:
            return 0
        processed, failed = _process_or_replay(events, reload=lambda: _lock_events([e.pk for e in events]),
                                               index=index, now=now)
        Event.objects.filter(pk__in=processed).update(status=EventStatus.PROCESSED, processed_at=now)
        for event in failed:
            Event.objects.filter(pk=event.pk).update(
                status=EventStatus.FAILED, processed_at=now, error=event.error, attempts=event.attempts + 1
            )
        customers_recheck([(e.customer_id, e.name) for e in events], guarded=True)  # last: it locks rows
    return len(processed)


def _lock_events(event_ids: list[int]) -> list[Event]:
    return _customers_shared(list(
        Event.objects.select_for_update(of=("self",), **skip_locked())
        .filter(pk__in=event_ids, status=EventStatus.PENDING)
        .select_related("customer")
        .order_by("timestamp", "id")
    ))


def _customers_shared(events: list[Event]) -> list[Event]:
    # One Customer object per customer for the whole batch, so a later event sees
    # what an earlier one changed (select_related gives each event its own copy).
    shared: dict = {}
    for event in events:
        if event.customer_id:
            event.customer = shared.setdefault(event.customer_id, event.customer)
    return events


HISTORY_PAGE = 500  # history events settled per set-based pass


def history_events_settle(*, event_ids: list[int]) -> None:
    """What history events (just stored by ingestion, in its transaction) still do: stop or
    resolve existing work, set-based as `events_process` is (see `event_route`: goals convert,
    inactivity windows close, a wait that began before the event resumes); never start any.

    Done in the transaction that stores them, so it is neither lost nor done twice, and their
    rows stay `history`. If the set-based pass fails (a bug, not a failing step), it is replayed
    one event at a time; an event that still fails is logged and says so on its row."""
    now = timezone.now()
    index = trigger_index()
    for i in range(0, len(event_ids), HISTORY_PAGE):
        page = event_ids[i : i + HISTORY_PAGE]
        events = _history_load(page)
        reasons = {e.pk: e.error for e in events}
        _processed, failed = _process_or_replay(events, reload=lambda: _history_load(page), index=index, now=now)
        for event in failed:
            Event.objects.filter(pk=event.pk).update(
                error=f"{reasons[event.pk]}; what it stops failed: {event.error}"[:4000])
        # What the history changed about them is where they stand, not a change to act on: the
        # refreshes must not take it for one (no segment entry, no live `Stage Entered`).
        customers = list(Customer.objects.filter(pk__in={e.customer_id for e in events}, merged_into__isnull=True,
                                                 erased_at__isnull=True).order_by("pk").only(*PROFILE_FIELDS))
        segment_members_settle(customers=customers, now=now)
        customers_stage_settle(customers=customers, now=now)


def _process_or_replay(events: list[Event], *, reload, index, now) -> tuple[list[int], list[Event]]:
    """Process the events set-based under one savepoint; if anything escapes that (a bug, not a
    failing step), roll it back and replay `reload()`'s fresh copies one at a time, each in its
    own savepoint (`_process_each`). Returns the ids processed and the events that failed."""
    try:
        with transaction.atomic():
            _process_set(events=events, index=index, now=now)
        return [e.pk for e in events], []
    except Exception:
        logger.exception("set-based processing of %d events failed; replaying them one by one", len(events))
        return _process_each(events=reload(), index=index, now=now)


def _history_load(event_ids: list[int]) -> list[Event]:
    return _customers_shared(list(
        Event.objects.filter(pk__in=event_ids, status=EventStatus.HISTORY, customer__isnull=False)
        .select_related("customer").order_by("timestamp", "id")
    ))


def _open_runs(events: list[Event]) -> dict[int, list[JourneyRun]]:
    customers = {e.customer_id: e.customer for e in events if e.customer_id}
    open_runs: dict[int, list[JourneyRun]] = defaultdict(list)
    # Locked: a timer waking the same run in another worker waits for us (and vice versa).
    for run in JourneyRun.objects.select_for_update(of=("self",)).filter(
        customer_id__in=set(customers), status__in=[RunStatus.ACTIVE, RunStatus.WAITING]
    ).order_by("pk"):  # one event acts on a customer's runs in the order they began, in every path
        run.customer = customers[run.customer_id]
        open_runs[run.customer_id].append(run)
    return open_runs


def _open_runs_reload(open_runs: dict[int, list[JourneyRun]], events: list[Event]) -> None:
    """The open runs of these events' customers as the database has them now. The lists are
    kept current for what the processor itself does (enrol, convert, resume), not for what a
    step does to other runs: start_workflow ends the runs it names and starts one in another
    workflow. A customer's next event in the same batch must meet those, not the runs as
    they were (an exited run resumed, its state written back over the exit)."""
    fresh = _open_runs(events)
    for customer_id in {e.customer_id for e in events if e.customer_id}:
        open_runs[customer_id] = fresh[customer_id]


def _process_each(*, events: list[Event], index, now) -> tuple[list[int], list[Event]]:
    """The fallback: one savepoint per event, rows written as they are made."""
    open_runs = _open_runs(events)
    processed, failed = [], []
    seen: set[int] = set()
    with batch_suspended():
        for event in events:
            if event.customer_id in seen:
                _open_runs_reload(open_runs, [event])
            seen.add(event.customer_id)
            try:
                with transaction.atomic():
                    event_route(event=event, open_runs=open_runs, index=index, now=now)
                processed.append(event.pk)
            except Exception as exc:
                logger.exception("event %s failed", event.pk)
                event.error = "".join(traceback.format_exception_only(exc)).strip()[:4000]
                failed.append(event)
    return processed, failed


def _still_open(run: JourneyRun) -> bool:
    """Whether a run is still open in the database (an engine batch's moves written first)."""
    batch = current_batch()
    if batch is not None:
        batch.flush()
    return JourneyRun.objects.filter(pk=run.pk, status__in=[RunStatus.ACTIVE, RunStatus.WAITING]).exists()


def _process_set(*, events: list[Event], index, now) -> None:
    open_runs = _open_runs(events)
    batch = EngineBatch(customer_ids={e.customer_id for e in events if e.customer_id}, now=now)
    with batch.active():
        for n, wave in enumerate(customer_waves(events, lambda e: e.customer_id)):
            if n:  # a customer's earlier event may have ended or started runs (a move): read them again
                _open_runs_reload(open_runs, wave)
            enrolments = Enrolments(now=now)
            after = []
            for event in wave:
                after.append(event_route(event=event, open_runs=open_runs, index=index, now=now, enrol=enrolments))
            for entries in enrolments.rounds():
                batch.flush()  # what the wave's resumes did (runs completed, moves: runs ended and started),
                # and an earlier round's moves, are written before entries are checked, as one event at a time sees it
                entries.load_history()
                for version, customer, trigger_key, event, rctx in entries.candidates:
                    if entries.admit(version=version, customer=customer, trigger_key=trigger_key, ctx=rctx):
                        entries.accept(version=version, customer=customer, trigger_key=trigger_key, event=event)
                for run, version, event in entries.insert():
                    run_execute(run=run, version=version, customer=run.customer, event=event, now=now,
                                since=event_time(event))
                    if run.status in (RunStatus.ACTIVE, RunStatus.WAITING):
                        open_runs[run.customer_id].append(run)
            batch.flush()  # the entries' moves start their runs (set_stage among their steps) before
            # the stage rules are applied, as one event at a time sees it
            for finish in after:
                if finish is not None:
                    finish()
            batch.flush()


class Enrolments:
    """The enrolments a wave asks for, checked against the customers' run history
    (one query) and inserted with one INSERT ... ON CONFLICT DO NOTHING."""

    def __init__(self, *, now) -> None:
        self.now = now
        self.candidates: list[tuple] = []
        self.history: dict[tuple[int, int], list[tuple]] = defaultdict(list)
        self.accepted: list[tuple[JourneyRun, object, object]] = []

    def __call__(self, *, version, customer, trigger_key: str, event, rule_ctx) -> None:
        self.candidates.append((version, customer, trigger_key, event, rule_ctx))

    def rounds(self) -> list[Enrolments]:
        """The candidates in rounds: a customer's entry that comes after one into a workflow that
        can move them (journeys.engine.moves) waits for the next round, so that it is checked,
        and its run started, after that move, as one event at a time does. Without such a
        workflow (the common case): one round, this one."""
        if not any(version.moves for version, *_ in self.candidates):
            return [self]
        rounds: list[Enrolments] = []
        movers: dict[int, int] = defaultdict(int)
        for candidate in self.candidates:
            version, customer = candidate[0], candidate[1]
            n = movers[customer.pk]
            if n == len(rounds):
                rounds.append(Enrolments(now=self.now))
            rounds[n].candidates.append(candidate)
            movers[customer.pk] += version.moves
        return rounds

    def load_history(self) -> None:
        """The runs the entry checks need (`entry_history`), one query for the whole round."""
        wanted = [(version, customer.pk, trigger_key) for version, customer, trigger_key, _, _ in self.candidates]
        for pair, rows in entry_history(wanted=wanted, now=self.now).items():
            self.history[pair].extend(rows)

    def admit(self, *, version, customer, trigger_key: str, ctx) -> bool:
        rows = self.history[(version.workflow_id, customer.pk)]
        if any(key == trigger_key for key, _, _ in rows):
            return False
        previous = [(status, created) for _, status, created in rows]
        return runner.entry_refusal(version=version, customer=customer, ctx=ctx, now=self.now, previous=previous) is None

    def accept(self, *, version, customer, trigger_key: str, event) -> None:
        run = instance_new(JourneyRun, {
            "workflow_id": version.workflow_id, "version_id": version.id, "trigger_key": trigger_key,
            "exclusive": not version.allow_concurrent_runs, "current_step": version.entry_step,
            "visits": {version.entry_step: 1} if version.entry_step else {},
        }, {"customer": customer, "trigger_event": event})
        self.history[(version.workflow_id, customer.pk)].append((trigger_key, RunStatus.ACTIVE, self.now))
        self.accepted.append((run, version, event))

    def insert(self) -> list[tuple[JourneyRun, object, object]]:
        """Insert the accepted runs; those that hit a unique constraint (a concurrent or
        earlier enrolment of the same trigger, a second open run) or that the re-entry gate
        refuses (`runs_insert`: a concurrent entry of the same customer won) are dropped."""
        versions = {version.id: version for _, version, _ in self.accepted}
        kept = {run.pk: run for run in runs_insert(runs=[run for run, _, _ in self.accepted], versions=versions, now=self.now)}
        return [(run, version, event) for run, version, event in self.accepted if run.pk in kept and kept[run.pk] is run]


def _before_entry(run: JourneyRun, event: Event) -> bool:
    """Whether the event happened before the run began: before its trigger event (or, without
    one, before the run was made). Read from the database only for an event stamped before the
    run was made (a late batch, or the trigger's own batch)."""
    if event.timestamp >= run.created_at:
        return False
    if run.trigger_event_id is None:
        return True
    began = Event.objects.filter(pk=run.trigger_event_id).values_list("timestamp", flat=True).first()
    return began is not None and event.timestamp < began


def _wait_span(run: JourneyRun, *, history: bool) -> tuple[datetime | None, datetime | None]:
    """(since, until) of the wait the run is at, in the customer's own time: from the time of the
    event it came on (a wait reached on a timer: when it woke) to its deadline, as `WaitForEvent`
    records them on its row. A row from before it recorded them: since is the step's start for a
    history event and None (the run's entry: `_before_entry`) for a live one, as then; until is
    the timeout counted from the step's start."""
    row = StepExecution.objects.filter(
        run_id=run.pk, step_key=run.current_step, visit=run.visits.get(run.current_step, 1)
    ).values_list("started_at", "detail").first()
    if row is None:
        return None, None
    started, detail = row
    if "since" in (detail or {}):
        return datetime.fromisoformat(detail["since"]), datetime.fromisoformat(detail["until"])
    step = load_version(run.version_id).steps.get(run.current_step)
    timeout = step.config.get("timeout") if step else None
    until = add_wait(started, customer_zone(run.customer), seconds=timeout) if timeout else None
    return (started if history else None), until


def _answered_before(run: JourneyRun, event: Event) -> bool:
    """Whether the event already answered a wait of this run (an event answers one wait of a run
    only, in the live path as in the stored lookup: journeys.engine.waits). Both run under the run's lock."""
    from journeys.engine.waits import runs_answered

    return event.pk in runs_answered([run.pk], current_batch()).get(run.pk, ())


def _outside_wait(run: JourneyRun, event: Event, now: datetime, *, history: bool) -> bool:
    """Whether the event happened outside the wait the run is at, in the customer's own time
    (`_wait_span`): before it began (an import or a late delivery about something from before it;
    not an answer to it), or after its deadline (the tick that times the run out is late, or claimed
    it and its task has not run yet: the run is left to the timeout path, as if the tick had been
    on time). `next_wake_at` is the deadline, or a tick's lease past it (at most `WAKE_LEASE` after
    the claim, made on the real clock). The wait's row is read only for an event stamped before the
    run was last saved (it began waiting then or earlier), or when next_wake_at may be a lease."""
    due = run.next_wake_at
    if due is not None and event.timestamp > due:
        return True  # after the deadline, whether next_wake_at is the deadline or a lease past it
    early = run.updated_at is None or event.timestamp < run.updated_at
    if not early and (due is None or due - now > WAKE_LEASE):
        return False
    since, until = _wait_span(run, history=history)
    if early and _answered_before(run, event):
        return True  # it answered an earlier wait of this run (the one it came on, or a stored answer)
    if early and (_before_entry(run, event) if since is None else event.timestamp < since):
        return True
    return until is not None and event.timestamp > until


def event_route(*, event: Event, open_runs: dict, index, now, enrol=None):
    """Everything one event can do: convert, wake waiting runs, open/close inactivity windows, enrol.

    With `enrol` (set-based processing), enrolments are handed to it instead of being made
    here, and the event's remaining work (lifecycle stage) comes back as a callable to run
    after them; without it, everything happens now and None is returned.

    Events act by their own time (timestamp), not by when a worker gets to them: a waiting run
    is resumed by an event that happened within its wait (from the time of the event the run came
    to the wait on, to the deadline; `_wait_span`), and an inactivity window is closed by a
    follow-up that happened within it. One that happened after the deadline or the window's end
    leaves the run or window to the tick, as if it had been on time.

    A history event (`EventStatus.HISTORY`: an import that did not opt in, or older than
    EVENT_TRIGGER_MAX_AGE_S when accepted) only does what stops or resolves existing work: it
    converts runs whose goal it is, closes the inactivity windows it follows up, and resumes a
    run waiting for it as a live event does. It starts nothing: no enrolment, no
    inactivity window, no attribute-change or segment entry, no lifecycle stage.
    """
    customer = event.customer
    if customer is None:
        return None
    runs = open_runs[customer.pk]
    history = event.status == EventStatus.HISTORY
    if history and not runs and event.name not in index.inactivity_stop:
        return None  # the usual backfilled event: nothing of its customer it could stop
    rctx = RuleContext(
        event=event_dict(event), profile=profile_dict(customer, now), context=context_dict(event, now),
        journey={}, now=now, events_in_last=events_counter(customer.pk),
    )
    traits = dict(customer.traits)  # as rctx has them: the steps run below do not change what "before" was
    acted = False  # once one of the customer's runs went on, it may have ended the others (a move)
    for run in list(runs):
        version = load_version(run.version_id)
        if event.name and event.name == version.goal_event and _before_entry(run, event):
            continue  # it happened before the run began (a late offline queue): neither goal nor answer
        if version.goal_event and version.goal_event == event.name:
            if rule_true(version.goal_filter, replace(rctx, journey=run.variables))[0]:
                if acted and not _still_open(run):
                    runs.remove(run)
                    continue
                run_convert(run=run, now=now)
                runs.remove(run)
                acted = True
                continue
        if run.status == RunStatus.WAITING and run.wait_event and run.wait_event == event.name:
            step = version.steps.get(run.current_step)
            text = (step.config.get("filter") if step else "") or ""
            if rule_true(text, replace(rctx, journey=run.variables))[0]:
                if _outside_wait(run, event, now, history=history):
                    continue  # before the wait began or after its deadline (the timeout path's)
                if acted and not _still_open(run):
                    runs.remove(run)
                    continue
                run_resume(run=run, outcome="event", now=now, event=event)
                acted = True
                if run.status not in (RunStatus.ACTIVE, RunStatus.WAITING):
                    runs.remove(run)

    for vid in index.inactivity_stop.get(event.name, ()):
        TriggerWatch.objects.filter(
            version_id=vid, customer=customer, fired_at__isnull=True, cancelled_at__isnull=True,
            start_event__timestamp__lte=event.timestamp, due_at__gte=event.timestamp,
        ).update(cancelled_at=now)  # a follow-up after the window ended leaves it to fire (the tick is late)
    if history:
        return None
    for vid in index.inactivity_start.get(event.name, ()):
        if not index.admits(vid, customer.pk):  # the window belongs to the version the customer is routed to
            continue
        version = load_version(vid)
        if not rule_true(version.trigger_config.get("filter", ""), rctx)[0]:
            continue
        window = parse_duration(version.trigger_config.get("within", "1h"), field="within")
        # the follow-up may be stored already (sent in a later request, stamped later, processed first)
        followed = Event.objects.filter(
            customer=customer, name=version.trigger_config.get("followed_by", ""),
            timestamp__gte=event.timestamp, timestamp__lte=event.timestamp + window,
        ).exclude(pk=event.pk).exists()  # "X not followed by X": the start is not its own follow-up
        TriggerWatch.objects.get_or_create(
            version_id=vid, start_event=event,
            defaults={"customer": customer, "due_at": event.timestamp + window, "cancelled_at": now if followed else None},
        )

    def start(version, trigger_key: str) -> None:
        if enrol is not None:
            enrol(version=version, customer=customer, trigger_key=trigger_key, event=event, rule_ctx=rctx)
            return
        run = run_enroll(version=version, customer=customer, trigger_key=trigger_key, now=now, event=event, rule_ctx=rctx,
                         since=event_time(event))
        if run is not None and run.status in (RunStatus.ACTIVE, RunStatus.WAITING):
            runs.append(run)

    for vid in index.by_event.get(event.name, ()):
        if not index.admits(vid, customer.pk):
            continue
        version = load_version(vid)
        if not rule_true(version.trigger_config.get("filter", ""), rctx)[0]:
            continue
        start(version, f"event:{event.pk}")

    if event.changes:
        _profile_triggers(event=event, customer=customer, traits=traits, index=index, rctx=rctx, start=start)

    def finish() -> None:
        if event.name not in STAGE_EVENTS:
            customer_evaluate_stage(customer=customer, now=now, rule_ctx=rctx)

    if enrol is not None:
        return finish
    finish()
    return None


def _profile_triggers(*, event, customer, traits: dict, index, rctx, start) -> None:
    """Attribute-change and segment-entry triggers, from the changes this event made (`traits`:
    the customer's traits when the event began to act; the profile before is those, the
    changes undone)."""
    old_traits = {**traits, **{k: v[0] for k, v in event.changes.items()}}
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
            before, after = event.changes[attribute]
            if "to" in config and after != config["to"] or "from" in config and before != config["from"]:
                continue
        else:
            rule = config.get("rule", "")
            old_profile = {**rctx.profile, **{k: None for k in event.changes}, **old_traits}
            was = rule_true(rule, replace(rctx, profile=old_profile))[0]
            now_in = rule_true(rule, rctx)[0]
            if was or not now_in:
                continue
        start(version, f"profile:{event.pk}")


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
