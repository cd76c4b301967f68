"""A wait answered before it began: the awaited event reached the API first.

Events act by their own time (timestamp), not by when a worker gets to them. A run that comes to a
`wait_for_event` step on an event (the event that started it, or the awaited event that ended its
last wait) begins to wait, in the customer's own time, when that event happened. A matching event
of the customer that happened from then to the wait's deadline, but that was processed before the
wait began (sent in a later request, stamped later, processed first: two devices, an SDK flushing
two queues), answers the wait as it begins, as a stored follow-up closes an inactivity window as
it opens (journeys.engine.processor). Only events already processed (or stored as history) are
looked for. A pending one resumes the wait when a worker processes it, if the run still waits
then, and the tick does not time a wait out while such an event is queued (`_answers_queued` in
journeys.engine.wakeups). One limit remains: an event still uncommitted in another worker's batch
when the wait begins is seen by neither (the run times out). An event answers one wait of a run only: the event the run came on, and an event that
answered one of its earlier waits (`answered_by` on the wait's row), are not answers again, here
as in the live path. A stored answer's filter reads the profile as it was when the wait began.

Each wait reads the earliest STORED_ANSWERS events of its name in its own span, through the
(customer, name, timestamp) index, and takes the first its filter accepts. Alone (no engine
batch) the step looks at once (`wait_begun`). In an engine batch the waits begun are collected
(`StoredAnswers`) and looked up together at the batch's flush, one query per awaited event name
on PostgreSQL (one index range per wait); the answered runs are resumed
there with the `event` outcome, as an event processed later would resume them, and their next
steps join the batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.db import connection

from journeys.choices import EventStatus, RunStatus
from journeys.engine.batch import EngineBatch, current_batch, ids_q
from journeys.models import Event, JourneyRun, StepExecution
from journeys.rules import RuleContext, compile_rule

KEY = "journeys.stored_answers"
ANSWERED_STATUSES = (EventStatus.PROCESSED, EventStatus.HISTORY)
STORED_ANSWERS = 100  # candidates read per wait, alone and in a batch (the earliest first)


@dataclass(slots=True)
class Wait:
    run: Any
    version_id: int
    customer_id: int
    event_name: str
    filter: str
    since: datetime
    until: datetime
    came_on: int | None  # the event the run came to the wait on: not its own answer
    rule_ctx: RuleContext
    answered: frozenset[int] = frozenset()  # events that answered the run's earlier waits: not answers again


def wait_begun(ctx, *, since: datetime, until: datetime):
    """The stored event that answers the wait the run begins at `ctx` (alone), or None; in an engine
    batch, None now and the wait is looked up at the flush (`StoredAnswers`)."""
    customer_id = getattr(ctx.customer, "pk", None)
    if ctx.dry_run or customer_id is None:
        return None
    wait = Wait(run=ctx.run, version_id=ctx.version_id, customer_id=customer_id, event_name=ctx.config["event"],
                filter=ctx.config.get("filter") or "", since=since, until=until,
                came_on=getattr(ctx.event, "pk", None), rule_ctx=ctx.rule_context())
    batch = current_batch()
    if batch is not None:
        batch.extension(KEY, StoredAnswers).waits.append(wait)
        return None
    wait.answered = frozenset(runs_answered([ctx.run.pk]).get(ctx.run.pk, ()))
    return _first_answer(wait, _candidates(wait))


def _candidates(wait: Wait):
    """The wait's candidates, alone: the earliest STORED_ANSWERS stored events of its name in its span."""
    return Event.objects.filter(customer_id=wait.customer_id, name=wait.event_name, timestamp__gte=wait.since,
                                timestamp__lte=wait.until, status__in=ANSWERED_STATUSES
                                ).order_by("timestamp", "id")[:STORED_ANSWERS]


def _candidates_batch(name: str, waits: list[Wait]) -> dict[int, list[Event]]:
    """index in `waits` -> its candidates, the same as `_candidates` reads for each alone (each wait's
    own span, the earliest STORED_ANSWERS): on PostgreSQL one query, a range of the (customer,
    name, timestamp) index per wait (ids first, then the rows); elsewhere (SQLite, development) one
    query over the waits' widest span, cut to each wait's own span and limit here."""
    if connection.vendor != "postgresql":
        rows = Event.objects.filter(
            ids_q("customer_id", sorted({w.customer_id for w in waits})), name=name,
            timestamp__gte=min(w.since for w in waits), timestamp__lte=max(w.until for w in waits),
            status__in=ANSWERED_STATUSES).order_by("timestamp", "id")
        per_customer: dict[int, list[Event]] = defaultdict(list)
        for event in rows:
            per_customer[event.customer_id].append(event)
        return {i: [e for e in per_customer[w.customer_id] if w.since <= e.timestamp <= w.until][:STORED_ANSWERS]
                for i, w in enumerate(waits)}
    table = connection.ops.quote_name(Event._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT w.i, e.id FROM unnest(%s::int[], %s::bigint[], %s::timestamptz[], %s::timestamptz[]) "
            "AS w(i, cid, since, until) CROSS JOIN LATERAL ("
            f"SELECT id, timestamp FROM {table} WHERE customer_id = w.cid AND name = %s "
            "AND timestamp >= w.since AND timestamp <= w.until AND status = ANY(%s::text[]) "
            "ORDER BY timestamp, id LIMIT %s OFFSET 0) AS e ORDER BY w.i, e.timestamp, e.id",
            [list(range(len(waits))), [w.customer_id for w in waits], [w.since for w in waits],
             [w.until for w in waits], name, [str(s) for s in ANSWERED_STATUSES], STORED_ANSWERS])
        hits = cursor.fetchall()
    events = Event.objects.in_bulk({event_id for _, event_id in hits}) if hits else {}
    found: dict[int, list[Event]] = defaultdict(list)
    for i, event_id in hits:
        found[i].append(events[event_id])
    return found


def _first_answer(wait: Wait, candidates) -> Event | None:
    """The earliest candidate (in timestamp order) within the wait's span that its filter accepts."""
    rule = compile_rule(wait.filter) if wait.filter else None
    for event in candidates:
        if event.pk == wait.came_on or event.pk in wait.answered or not wait.since <= event.timestamp <= wait.until:
            continue
        if rule is None or rule.evaluate(_with_event(wait.rule_ctx, event)).value:
            return event
    return None


def runs_answered(run_ids: list[int], batch: EngineBatch | None = None) -> dict[int, set[int]]:
    """run id -> the events that answered its waits (`answered_by` on the wait rows; with `batch`,
    also those of the rows it holds, not written yet). An event answers one wait of a run only."""
    found: dict[int, set[int]] = defaultdict(set)
    if batch is not None:
        for run_id, events in batch.answered_held(run_ids).items():
            found[run_id] |= events
    rows = StepExecution.objects.filter(ids_q("run_id", run_ids), detail__has_key="answered_by")
    for run_id, event_id in rows.values_list("run_id", "detail__answered_by"):
        found[run_id].add(int(event_id))
    return found


def _with_event(ctx: RuleContext, event: Event) -> RuleContext:
    from journeys.engine.runtime import context_dict, event_dict

    return replace(ctx, event=event_dict(event), context=context_dict(event, ctx.now))


class StoredAnswers:
    """The waits begun in one engine batch, looked up together at its flush."""

    def __init__(self, batch: EngineBatch) -> None:
        self.batch = batch
        self.waits: list[Wait] = []

    def flush(self) -> bool:
        """Resume the waits a stored event answers; True when runs went on (their rows are in the
        batch again: it flushes once more)."""
        if not self.waits:
            return False
        waits, self.waits = self.waits, []
        answered = runs_answered([w.run.pk for w in waits], self.batch)
        waits = [replace(w, answered=frozenset(answered.get(w.run.pk, ()))) for w in waits]
        by_name: dict[str, list[Wait]] = defaultdict(list)
        for wait in waits:
            by_name[wait.event_name].append(wait)
        answered = []
        for name, group in by_name.items():
            candidates = _candidates_batch(name, group)
            answered += [(wait, answer) for i, wait in enumerate(group)
                         if (answer := _first_answer(wait, candidates.get(i, ())))]
        if not answered:
            return False
        return self._resume(answered)

    def _resume(self, answered: list[tuple[Wait, Event]]) -> bool:
        from journeys.engine.compiled import load_version
        from journeys.engine.runner import event_time, run_execute

        self.batch.flush_runs()  # a move in this flush may have ended some of them: read what is still waiting
        waiting = set(JourneyRun.objects.filter(ids_q("pk", [w.run.pk for w, _ in answered]), status=RunStatus.WAITING)
                      .values_list("pk", flat=True))
        resumed = False
        for wait, answer in answered:
            run = wait.run
            if run.pk not in waiting or run.status != RunStatus.WAITING:
                continue
            run_execute(run=run, version=load_version(wait.version_id), customer=run.customer, event=answer,
                        now=self.batch.now, resume_outcome="event", since=event_time(answer))
            resumed = True
        return resumed
