"""Runs that are due: a delay ends, a wait times out, a bulk entry starts (at once, or when the
workflow's business hours open).

The tick only *claims*: `runs_claim_due` takes due runs in pages (`SELECT ... FOR UPDATE SKIP
LOCKED`, so ticks and workers never take the same run), moves their `next_wake_at` to a lease
(`WAKE_LEASE` ahead) and hands each page to the event workers as one q2 task. The task
(`runs_wake`) takes the page's runs that still carry that lease (a compare-and-set: a run an
event resumed meanwhile, or a page handed out twice, is skipped), and resumes or starts them
through the batch engine: the steps run with their rows, run states and messages written in
bulk, the waiting steps closed with one UPDATE per outcome (journeys.engine.batch).
A task that is lost (a killed worker on the Redis broker) costs the lease, not the run: its
runs are due again when the lease has passed and the tick claims them again.

There is no cap per tick: the tick claims pages until nothing is due, and the cost is one
indexed range scan per page (`run_due_idx` on status, next_wake_at).
"""

from __future__ import annotations

import logging
import traceback
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Min
from django.utils import timezone

from journeys.choices import EventStatus, RunStatus
from journeys.engine.batch import EngineBatch, batch_suspended, customer_waves, ids_q, rows_set, skip_locked
from journeys.engine.compiled import load_version
from journeys.engine.queue import enqueue_work
from journeys.engine.runner import run_execute, run_start, runs_end
from journeys.engine.runtime import add_local, customer_zone
from journeys.models import Event, JourneyRun, StepExecution

logger = logging.getLogger(__name__)

WAKE_LEASE = timedelta(minutes=2)  # a claimed run is due again if its task has not run by then
ANSWER_HOLD = timedelta(seconds=15)  # a timeout held for a queued answer is looked at again this much later
ANSWER_GRACE = timedelta(minutes=10)  # an event pending longer than this (no worker) holds no timeout


def claim_page() -> int:
    """Runs claimed per statement, and per q2 task (settings.ENGINE_RUN_BATCH, default 1,000)."""
    return max(1, int(getattr(settings, "ENGINE_RUN_BATCH", 1000)))



def wake_enqueue(*, run_ids: list[int], lease: datetime, now: datetime, due: list[datetime] | None = None) -> None:
    """One `runs_wake` task per page of runs (claim_page()), for the event workers' cluster. `due`
    (aligned with run_ids): when each run's timer ended (a delay's end, a wait's deadline)."""
    page = claim_page()
    for i in range(0, len(run_ids), page):
        args = (run_ids[i : i + page], lease, now) + ((due[i : i + page],) if due is not None else ())
        enqueue_work("journeys.tasks.runs_wake", *args, group="runs")


def runs_claim_due(*, now: datetime, deadline: float | None = None) -> int:
    """Claim every due run, page by page, and hand each page to a `runs_wake` task; returns how many.
    `deadline` (time.monotonic()) stops claiming early so a tick stays within its budget; what is
    left stays due for the next tick."""
    import time

    lease = now + WAKE_LEASE
    page = claim_page()
    claimed = 0
    while True:
        with transaction.atomic():
            rows = list(
                JourneyRun.objects.select_for_update(**skip_locked())
                .filter(status=RunStatus.WAITING, next_wake_at__lte=now)
                .order_by("next_wake_at")
                .values_list("pk", "next_wake_at")[:page]
            )
            ids = [pk for pk, _ in rows]
            if ids:
                JourneyRun.objects.filter(ids_q("pk", ids)).update(next_wake_at=lease)
                wake_enqueue(run_ids=ids, lease=lease, now=now, due=[due for _, due in rows])
        claimed += len(ids)
        if len(ids) < page or (deadline is not None and time.monotonic() > deadline):
            return claimed


def runs_wake(*, run_ids: list[int], lease: datetime, now: datetime | None = None,
              due: list[datetime] | None = None) -> int:
    """Start or resume the runs of one claimed page that still carry its lease; returns how many.

    One transaction. Set-based first (one savepoint for the page); if anything escapes that (a
    bug, not a failing step: a failing step only fails its run), the page is replayed run by run,
    each in its own savepoint, and a run that still breaks is marked failed. `now` is the moment
    the page was claimed (its runs were due then), so a following delay counts from there.

    A customer with several runs in the page wakes them in id order, and a later one only if it is
    still waiting with the page's lease: a run the customer's earlier run ended (a start_workflow
    move that exits its workflow) stays ended and takes no step.

    `due` (aligned with run_ids; None from a task queued before it was passed, or a bulk enrolment):
    when each run's timer ended. The steps after a delay or a timeout go on from that moment in
    the customer's own time (`StepContext.since`: a wait that follows begins then, not when a late
    tick claimed it)."""
    now = now or timezone.now()
    dues = {pk: min(moment, now) for pk, moment in zip(run_ids, due or ()) if moment is not None}
    with transaction.atomic():
        runs = _answers_queued(_local_times_moved(_lock(run_ids, lease), now), now, dues)
        if not runs:
            return 0
        try:
            with transaction.atomic():
                _wake_set(runs, now, lease, dues)
        except Exception:
            logger.exception("set-based wake-up of %d runs failed; replaying them one by one", len(runs))
            _wake_each(_lock([r.pk for r in runs], lease), now, lease, dues)
    return len(runs)


def _lock(run_ids: list[int], lease: datetime) -> list[JourneyRun]:
    runs = list(
        JourneyRun.objects.select_for_update(of=("self",), **skip_locked())
        .filter(ids_q("pk", run_ids), status=RunStatus.WAITING, next_wake_at=lease)
        .select_related("customer", "trigger_event")
        .order_by("pk")
    )
    shared: dict = {}  # one Customer object per customer: a step's profile update is seen by the next run
    for run in runs:
        run.customer = shared.setdefault(run.customer_id, run.customer)
    return runs


def _local_times_moved(runs: list[JourneyRun], now: datetime) -> list[JourneyRun]:
    """The runs to wake now. A delay `until_local_time` was timed on the customer's zone when it
    began; its time is read again here on the customer's zone of now (an identify may have changed
    it), counted from the step's start: a run whose time has not come in the new zone sleeps again
    until it (one query for the page's step starts, one UPDATE for the runs put back to sleep;
    nothing when the page holds no such wait). A new zone whose time came earlier wakes now."""
    waits: dict[int, str] = {}
    for run in runs:
        step = load_version(run.version_id).steps.get(run.current_step) if run.current_step else None
        if step is not None and step.kind.kind == "delay" and step.config.get("until_local_time"):
            waits[run.pk] = step.config["until_local_time"]
    if not waits:
        return runs
    started = {(run_id, key, visit): at for run_id, key, visit, at in StepExecution.objects.filter(
        ids_q("run_id", list(waits)), finished_at__isnull=True).values_list("run_id", "step_key", "visit", "started_at")}
    due, later = [], []
    for run in runs:
        began = started.get((run.pk, run.current_step, run.visits.get(run.current_step, 1))) if run.pk in waits else None
        moment = add_local(began, customer_zone(run.customer), at=waits[run.pk]) if began else None
        if moment is not None and moment > now:
            later.append({"id": run.pk, "next_wake_at": moment})
        else:
            due.append(run)
    rows_set(JourneyRun, later, ("next_wake_at",), stamp=now)
    return due


def _answers_queued(runs: list[JourneyRun], now: datetime, dues: dict[int, datetime]) -> list[JourneyRun]:
    """The runs to wake now. A wait does not time out while an event that may answer it waits for
    a worker: an event of the awaited name, of the run's customer, stamped by the wait's deadline,
    stored but not processed yet (a backlog, a retried task, a sweep to come). Its run sleeps
    ANSWER_HOLD more and is looked at again; the event, once processed, answers the wait or not
    (its filter, its time: journeys.engine.processor) as if the tick had come after it. An event
    received more than ANSWER_GRACE ago and still pending (no worker takes events) no longer holds
    a timeout. One query for the page's queued events, one for the held runs' deadlines and one
    UPDATE for the runs put back to sleep; nothing more when no such event is queued."""
    waiting = [r for r in runs if r.wait_event and r.pk in dues]
    if not waiting:
        return runs
    queued = dict(((customer, name), first) for customer, name, first in Event.objects.filter(
        ids_q("customer_id", list({r.customer_id for r in waiting})), name__in={r.wait_event for r in waiting},
        status=EventStatus.PENDING, timestamp__lte=max(dues[r.pk] for r in waiting),
        received_at__gte=now - ANSWER_GRACE,
    ).values("customer_id", "name").annotate(first=Min("timestamp")).values_list("customer_id", "name", "first"))
    maybe = [r for r in waiting if (r.customer_id, r.wait_event) in queued]
    if not maybe:
        return runs
    # The deadline is on the wait's row: a run held before is due at its hold, past its deadline.
    deadlines = {run_id: datetime.fromisoformat(detail["until"]) for run_id, detail in StepExecution.objects.filter(
        ids_q("run_id", [r.pk for r in maybe]), finished_at__isnull=True).values_list("run_id", "detail")
        if "until" in (detail or {})}
    held = {r.pk for r in maybe if queued[(r.customer_id, r.wait_event)] <= deadlines.get(r.pk, dues[r.pk])}
    if held:
        logger.info("%d wait(s) not timed out yet: an event that may answer them is queued", len(held))
        rows_set(JourneyRun, [{"id": pk, "next_wake_at": now + ANSWER_HOLD} for pk in sorted(held)],
                 ("next_wake_at",), stamp=now)
    return [r for r in runs if r.pk not in held]


def _still_waiting(runs: list[JourneyRun], lease: datetime) -> list[JourneyRun]:
    """The runs an earlier run of their customer (in this page) has not ended meanwhile."""
    waiting = set(JourneyRun.objects.filter(ids_q("pk", [r.pk for r in runs]), status=RunStatus.WAITING,
                                            next_wake_at=lease).values_list("pk", flat=True))
    return [r for r in runs if r.pk in waiting]


def _outcome(run: JourneyRun) -> str:
    return "timeout" if run.wait_event else "next"


def _wake_set(runs: list[JourneyRun], now: datetime, lease: datetime, dues: dict[int, datetime]) -> None:
    batch = EngineBatch(customer_ids={r.customer_id for r in runs}, now=now)
    with batch.active():
        for i, wave in enumerate(customer_waves(runs, lambda r: r.customer_id)):
            if i:
                batch.flush()  # the earlier waves' moves are written: the runs they ended are not waiting
                wave = _still_waiting(wave, lease)
            for run in wave:
                _wake_one(run, now, dues.get(run.pk))
        batch.flush()


def _wake_one(run: JourneyRun, now: datetime, due: datetime | None = None) -> None:
    version = load_version(run.version_id)
    if not run.current_step:
        run_start(run=run, version=version)
        run_execute(run=run, version=version, customer=run.customer, event=run.trigger_event, now=now)
    else:  # after a delay or a timeout the steps still read the trigger event (event.*), as before it
        run_execute(run=run, version=version, customer=run.customer, event=run.trigger_event, now=now,
                    resume_outcome=_outcome(run), since=due)


def _wake_each(runs: list[JourneyRun], now: datetime, lease: datetime, dues: dict[int, datetime]) -> None:
    woken: set[int] = set()
    with batch_suspended():
        for run in runs:
            if run.customer_id in woken and not _still_waiting([run], lease):
                continue  # the customer's earlier run ended it
            woken.add(run.customer_id)
            try:
                with transaction.atomic():
                    _wake_one(run, now, dues.get(run.pk))
            except Exception as exc:  # never let one run stop the others
                logger.exception("waking run %s failed", run.pk)
                error = "".join(traceback.format_exception_only(exc)).strip()
                runs_end(JourneyRun.objects.filter(pk=run.pk), status=RunStatus.FAILED, now=now,
                         error=f"wake failed: {error}")
