"""start_workflow inside an engine batch: moves written and started set-based at the flush.

Alone (no batch), the step ends the other workflows' open runs, closes its own run when it
is a move, enrols the customer in the target's live version and runs the new run's first
steps, all at once (`StartWorkflow.execute`). In an engine batch (a broadcast's wake-up page,
a batch of events) that cost a flush of the whole batch, a savepoint and ~15 statements per
customer. Here each visit only records the move; the batch's flush then, for all of them:

1. writes the run states the batch holds (so the history read below sees them: a run this
   batch completed is not open any more; the moving run is closed when it is a move);
2. ends the open runs of the named `exit_workflows` (but the moving run), one UPDATE per
   distinct list;
3. enrols through the same checks as an event's entries (`processor.Enrolments`: one history
   query for idempotency, the entry rule and the re-entry policy; one INSERT ... ON CONFLICT
   DO NOTHING; the database's entry gate), and
4. runs the new runs' first steps in the batch, like an event's new runs; what they write
   (messages, profile changes, further moves) joins the batch, whose flush goes round again.

The step's log row gets the new run's id (`started_run`) as alone; a refused entry gets None.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from journeys.choices import RunStatus
from journeys.engine.batch import EngineBatch, current_batch
from journeys.engine.compiled import CompiledVersion, load_version
from journeys.engine.runner import run_execute, runs_end
from journeys.engine.runtime import context_dict, event_dict, events_counter, profile_dict
from journeys.models import Customer, Event, JourneyRun, Workflow
from journeys.rules import RuleContext

KEY = "journeys.moves"

# A run started by a move carries who started it in its trigger key (`moved:run:<id>:<step>:<visit>`).
# More than this many moves in a row (each run started by the previous one's move, all within
# MOVE_CHAIN_WINDOW) is a loop of workflows moving a customer round (one workflow starting itself,
# or A -> B -> A through live versions published later): the step fails instead of starting yet
# another run (and sending its messages again).
MAX_MOVES_IN_A_ROW = 5
MOVE_CHAIN_WINDOW = timedelta(hours=1)
_MOVED_PREFIX = "moved:run:"


def _mover_id(trigger_key: str) -> int | None:
    """The run whose move started a run with this trigger key (None: not started by a move)."""
    if not trigger_key.startswith(_MOVED_PREFIX):
        return None
    head = trigger_key[len(_MOVED_PREFIX):].split(":", 1)[0]
    return int(head) if head.isdigit() else None


def move_loop(*, run: JourneyRun, target: str, now: datetime) -> str | None:
    """Why `run` may not move its customer to `target` now: the moves in a row that led to it
    (named workflow by workflow) are already MAX_MOVES_IN_A_ROW; None when it may. Costs nothing
    for a run no move started; one query per earlier move otherwise."""
    parent = _mover_id(run.trigger_key or "")
    if parent is None:
        return None
    names = [Workflow.objects.filter(pk=run.workflow_id).values_list("name", flat=True).first() or "?"]
    since = now - MOVE_CHAIN_WINDOW
    while parent is not None and len(names) <= MAX_MOVES_IN_A_ROW:
        row = JourneyRun.objects.filter(pk=parent, created_at__gte=since).values_list("trigger_key", "workflow__name").first()
        if row is None:
            break
        names.insert(0, row[1])
        parent = _mover_id(row[0])
    if len(names) <= MAX_MOVES_IN_A_ROW:
        return None
    return (f"stopped a loop of workflow moves: {' -> '.join([*names, target])} (more than {MAX_MOVES_IN_A_ROW} "
            "moves in a row without a wait; check the start_workflow steps of these workflows)")


@dataclass(slots=True)
class Move:
    run_id: int
    customer: Customer
    version: CompiledVersion
    target: str
    trigger_key: str
    event: Event | None
    rule_ctx: RuleContext
    exit_workflows: tuple[str, ...]
    since: datetime | None  # as the moving run's steps (StepContext.since): the new run's steps go on from it
    detail: dict  # the step's logged detail: gets `started_run` at the flush


def move_target(name: str) -> tuple[int, int | None] | None:
    """(workflow id, live version id) of the workflow a start_workflow step names; None when no
    workflow has that name (any more)."""
    return Workflow.objects.values_list("pk", "live_version_id").filter(name=name).first()


class MoveBatch:
    """The start_workflow visits of one engine batch (see the module docstring)."""

    def __init__(self, batch: EngineBatch) -> None:
        self.batch = batch
        self.targets: dict[str, tuple[int, int | None]] = {}
        self.moves: list[Move] = []

    @classmethod
    def current(cls) -> MoveBatch | None:
        batch = current_batch()
        return batch.extension(KEY, cls) if batch is not None else None

    def target(self, name: str) -> tuple[int, int | None] | None:
        """(workflow id, live version id) of the workflow called `name`, read once a batch (None:
        there is no such workflow)."""
        if name not in self.targets:
            self.targets[name] = move_target(name)
        return self.targets[name]

    def add(self, *, run: JourneyRun, customer: Customer, version_id: int, target: str, trigger_key: str,
            event: Any, now: datetime, exit_workflows: list[str], detail: dict, since: datetime | None = None) -> None:
        version = load_version(version_id)
        event = event if isinstance(event, Event) else None
        # What the entry rule reads, as at this visit (alone, run_enroll reads it at the same moment).
        rule_ctx = RuleContext(
            event=event_dict(event), profile=profile_dict(customer, now), context=context_dict(event, now),
            journey={}, now=now, events_in_last=events_counter(customer.pk),
        ) if version.entry_rule else RuleContext(now=now)
        self.moves.append(Move(run_id=run.pk, customer=customer, version=version, target=target,
                               trigger_key=trigger_key, event=event, rule_ctx=rule_ctx,
                               exit_workflows=tuple(exit_workflows), since=since, detail=detail))

    def flush(self) -> bool:
        """Write the recorded moves and run the new runs' first steps; True when steps ran (their
        rows are in the batch again: the batch flushes once more)."""
        if not self.moves:
            return False
        from journeys.engine.processor import Enrolments

        moves, self.moves = self.moves, []
        now = self.batch.now
        self.batch.flush_runs()
        exits: dict[tuple[str, ...], list[Move]] = defaultdict(list)
        for move in moves:
            if move.exit_workflows:
                exits[move.exit_workflows].append(move)
        for names, group in exits.items():
            # the reason names the target of a move; a batch's moves of one list rarely differ in it
            by_target: dict[str, list[Move]] = defaultdict(list)
            for move in group:
                by_target[move.target].append(move)
            for target, members in by_target.items():
                # as alone, a move spares only its own run (another run that made a move in this
                # flush is ended like any open run of the named workflows)
                runs_end(JourneyRun.objects.filter(
                    customer_id__in={m.customer.pk for m in members}, workflow__name__in=names,
                ).exclude(pk__in=[m.run_id for m in members]), status=RunStatus.EXITED, now=now, error=f"moved to {target}")
        enrolments = Enrolments(now=now)
        for move in moves:
            enrolments(version=move.version, customer=move.customer, trigger_key=move.trigger_key, event=move.event,
                       rule_ctx=move.rule_ctx)
        enrolments.load_history()
        for move in moves:
            if enrolments.admit(version=move.version, customer=move.customer, trigger_key=move.trigger_key,
                                ctx=move.rule_ctx):
                enrolments.accept(version=move.version, customer=move.customer, trigger_key=move.trigger_key,
                                  event=move.event)
        started = enrolments.insert()
        runs = {(run.workflow_id, run.customer_id, run.trigger_key): run for run, _, _ in started}
        for move in moves:
            run = runs.get((move.version.workflow_id, move.customer.pk, move.trigger_key))
            move.detail["started_run"] = run.pk if run is not None else None
        since = {(m.version.workflow_id, m.customer.pk, m.trigger_key): m.since for m in moves}
        for run, version, event in started:
            run_execute(run=run, version=version, customer=run.customer, event=event, now=now,
                        since=since[(run.workflow_id, run.customer_id, run.trigger_key)])
        return bool(started)
