"""Lifecycle stages: one shared answer to "where does this customer stand?"."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import datetime

from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from journeys.engine.listeners import STAGE_EVENTS, rule_stages
from journeys.engine.queue import enqueue_events
from journeys.models import Customer
from journeys.models.catalog import LifecycleStage, StageRecheck, StageRules, StageTransition
from journeys.rules.counted import counted_event_names
from journeys.services.bulk_ingest import events_insert
from journeys.services.internal_events import internal_event_row, internal_source
from journeys.services.rechecks import (
    rechecks_claim,
    rechecks_drop_missing,
    rechecks_mark,
    rechecks_write,
)

logger = logging.getLogger(__name__)


def customer_set_stage(*, customer: Customer, stage: str, reason: str, at: datetime | None = None) -> bool:
    """Move a customer to a stage; records the transition and `Stage Left`/`Stage Entered` events.

    Returns False when they are already there (nothing recorded). In an engine batch (a
    set_stage step, or a rule stage an event moves) it is recorded with the batch (StageBatch).
    """
    at = at or timezone.now()
    batch = StageBatch.current()
    if batch is not None:
        return batch.move(customer=customer, stage=stage, reason=reason, at=at)
    return _stage_set_now(customer=customer, stage=stage, reason=reason, at=at)


@transaction.atomic
def _stage_set_now(*, customer: Customer, stage: str, reason: str, at: datetime) -> bool:
    if not LifecycleStage.objects.filter(key=stage).exists():
        raise ValueError(f"unknown lifecycle stage {stage!r}")
    previous = Customer.objects.select_for_update(no_key=True).values_list("stage", flat=True).get(pk=customer.pk)
    if previous == stage:
        return False
    Customer.objects.filter(pk=customer.pk).update(stage=stage)
    customer.stage = stage
    transition = StageTransition.objects.create(customer=customer, from_stage=previous, to_stage=stage,
                                                reason=reason[:255], at=at)
    enqueue_events(events_insert(_stage_events(source_id=internal_source().pk, customer=customer,
                                               transition=transition)))
    return True


def _stage_events(*, source_id: int, customer: Customer, transition: StageTransition) -> list[dict]:
    """The `Stage Left` (when there was a stage) and `Stage Entered` rows of one transition (their
    message ids name the new transition, so they never meet an earlier event's key)."""
    previous, stage, at = transition.from_stage, transition.to_stage, transition.at
    rows = [internal_event_row(source_id=source_id, customer=customer, name="Stage Left",
                               properties={"stage": previous, "to": stage}, at=at,
                               message_id=f"stage-left:{transition.pk}")] if previous else []
    return rows + [internal_event_row(source_id=source_id, customer=customer, name="Stage Entered",
                                      properties={"stage": stage, "from": previous}, at=at,
                                      message_id=f"stage-entered:{transition.pk}")]


class StageBatch:
    """customer_set_stage for one engine batch (set_stage is batch-safe): the first time a
    stage moves, the batch's customers are locked with one statement (in id order, as
    ProfileBatch does) and each one's stage is taken from that locked read; later moves in the
    batch build on it. `flush()` writes the new stages with one UPDATE per distinct stage,
    the transitions with one INSERT and their `Stage Left`/`Stage Entered` events with one
    INSERT and one enqueue."""

    KEY = "journeys.stages"

    def __init__(self, batch) -> None:
        self.customer_ids = set(batch.customer_ids)
        self._known: set[str] | None = None
        self._locked: dict[int, str] | None = None
        self._stages: dict[int, str] = {}  # the stage of each customer the batch has moved or read
        self._moved: dict[int, str] = {}
        self._transitions: list[StageTransition] = []
        self._customers: dict[int, Customer] = {}
        self._ids: list[int] = []

    @classmethod
    def current(cls) -> StageBatch | None:
        from journeys.engine.batch import current_batch

        batch = current_batch()
        return batch.extension(cls.KEY, cls) if batch is not None else None

    def _stage(self, customer: Customer) -> str:
        """The customer's stage, read under this batch's lock the first time it is needed."""
        from journeys.engine.batch import ids_q

        pk = customer.pk
        if pk not in self._stages:
            if pk not in self.customer_ids:  # not one of the batch's (never expected): alone
                self.customer_ids.add(pk)
                self._stages[pk] = (Customer.objects.select_for_update(no_key=True)
                                    .values_list("stage", flat=True).get(pk=pk))
            else:
                if self._locked is None:
                    self._locked = dict(Customer.objects.select_for_update(no_key=True).filter(
                        ids_q("pk", list(self.customer_ids))).order_by("pk").values_list("pk", "stage"))
                self._stages[pk] = self._locked[pk]
        return self._stages[pk]

    def move(self, *, customer: Customer, stage: str, reason: str, at: datetime) -> bool:
        from journeys.engine.batch import instance_new, reserve_ids

        if self._known is None:
            self._known = set(LifecycleStage.objects.values_list("key", flat=True))
        if stage not in self._known:
            raise ValueError(f"unknown lifecycle stage {stage!r}")
        previous = self._stage(customer)
        if previous == stage:
            return False
        if not self._ids:
            self._ids = reserve_ids(StageTransition, max(16, len(self.customer_ids)))
        self._transitions.append(instance_new(StageTransition, {
            "id": self._ids.pop(0), "from_stage": previous, "to_stage": stage, "reason": reason[:255], "at": at,
        }, {"customer": customer}))
        self._stages[customer.pk] = self._moved[customer.pk] = customer.stage = stage
        self._customers[customer.pk] = customer
        return True

    def flush(self) -> None:
        if not self._transitions:
            return
        from journeys.engine.batch import ids_q, objects_insert

        moved, self._moved = self._moved, {}
        transitions, self._transitions = self._transitions, []
        customers, self._customers = self._customers, {}
        by_stage: dict[str, list[int]] = {}
        for pk, stage in moved.items():
            by_stage.setdefault(stage, []).append(pk)
        for stage, pks in by_stage.items():
            Customer.objects.filter(ids_q("pk", pks)).update(stage=stage)
        objects_insert(StageTransition, transitions)
        source_id = internal_source().pk
        enqueue_events(events_insert([row for t in transitions for row in _stage_events(
            source_id=source_id, customer=customers[t.customer_id], transition=t)]))


def customer_evaluate_stage(*, customer: Customer, now: datetime, rule_ctx=None) -> str | None:
    """Apply rule-defined stages: the first stage (by order) whose rule is true wins.

    Stages without a rule belong to workflow steps (`set_stage`): once a step put a
    customer there, only another step moves them.
    """
    from journeys.engine.runtime import profile_dict
    from journeys.rules import RuleContext, compile_rule

    stages = rule_stages()
    if not stages:
        return None
    if customer.stage and customer.stage not in {key for key, _ in stages}:
        return None  # a stage without a rule is managed by workflow steps; rules do not override it
    ctx = rule_ctx or RuleContext(profile=profile_dict(customer, now), now=now)
    for key, rule in stages:
        if compile_rule(rule).evaluate(ctx).value:
            if key != customer.stage:
                customer_set_stage(customer=customer, stage=key, reason=f"rule: {rule}"[:255], at=now)
            return key
    return None


def customers_stage_settle(*, customers: list[Customer], now: datetime) -> int:
    """The rule stage of customers that history just changed (an import that did not opt in, an
    identify older than EVENT_TRIGGER_MAX_AGE_S), set quietly as their traits were: the move and
    its transition are recorded (reason "history: ..."), but no `Stage Left`/`Stage Entered`
    event, so neither this nor the hourly refresh (which then finds them where they belong)
    starts a workflow. Called in the transaction that stores the history, which holds these
    customers. Returns how many moved."""
    stages = rule_stages()
    if not customers or not stages:
        return 0
    moves = _stage_targets(customers=customers, stages=list(stages), now=now)
    if moves:
        locked = _customers_lock(sorted(pk for pk, _, _ in moves))
        moves = [move for move in moves if move[0] in locked and locked[move[0]][0] == move[1]]
        _stage_moves_write(moves=moves, rules=dict(stages), locked=locked, now=now, quiet=True)
    return len(moves)


STAGE_CHUNK = 5000  # stage changes applied per transaction
DUE_VERSION = 1  # bump when journeys.rules.sql.due works moments out differently: everyone is walked again


def customer_stages_refresh(*, now: datetime, chunk: int = STAGE_CHUNK) -> int:
    """Re-evaluate rule-defined stages where time may have changed them ("inactive for 30 days").

    On PostgreSQL, when every stage rule translates (journeys.rules.sql), only the customers
    due are read (StageRecheck: changed since the last refresh, or at the moment a rule's answer
    may change with time; journeys.rules.sql.due), one statement per chunk computing each one's
    stage and next moment; after the rules change, every customer once. Elsewhere customers are
    evaluated in Python pages, every one every time. Each chunk of changes is one transaction:
    the customers are locked (skipping those a worker holds: it evaluates their stage itself,
    and they stay due), moved, and their transitions and `Stage Left`/`Stage Entered` events
    are inserted with one statement each and queued one task per batch. Returns how many
    customers moved.
    """
    from journeys.services.segments import segment_translation, utc

    now = utc(now)
    stages = list(
        LifecycleStage.objects.exclude(rule="").order_by("order", "key").values_list("key", "rule")
    )
    if not stages:
        StageRules.objects.all().delete()  # nobody is marked meanwhile: the next rules walk everyone
        return 0
    translations = [
        segment_translation(rule=rule, now=now, prefix=f"s{i}_", due=True) for i, (_, rule) in enumerate(stages)
    ]
    if all(t is not None for t in translations):
        try:
            return _stages_refresh_sql(translations=translations, stages=stages, now=now, chunk=chunk)
        except DatabaseError:  # a translation bug must not stop the refresh: say so, use Python
            logger.exception("stage refresh SQL failed; evaluating in Python")
    StageRules.objects.all().delete()  # nobody's moment is kept meanwhile: SQL walks everyone again
    moved = 0
    for moves in _stage_moves_python(stages=stages, now=now, chunk=chunk):
        moved += _stage_moves_apply(moves=moves, rules=dict(stages), now=now)[0]
    return moved


Move = tuple[int, str, str]  # customer id, from stage, to stage
Recheck = tuple[str | None, datetime | None]  # the recheck row's version as read (xmin; None: no row), its next moment


def _stage_moves_python(*, stages: list[tuple[str, str]], now: datetime, chunk: int) -> Iterator[list[Move]]:
    from journeys.services.segments import PROFILE_FIELDS

    keys = [key for key, _ in stages]
    base = Customer.objects.filter(merged_into__isnull=True).filter(Q(stage="") | Q(stage__in=keys))
    after = 0
    while page := list(base.filter(pk__gt=after).order_by("pk").only(*PROFILE_FIELDS)[:chunk]):
        after = page[-1].pk
        if moves := _stage_targets(customers=page, stages=stages, now=now):
            yield moves


def _stages_refresh_sql(*, translations: list, stages: list[tuple[str, str]], now: datetime, chunk: int) -> int:
    """PostgreSQL: the customers due (or, once after the rules changed, everyone), a chunk a
    statement: each one's first stage whose rule is certainly true ('?' where Python must tell)
    and the next moment to look again."""
    fingerprint = hashlib.sha256(json.dumps([DUE_VERSION, stages]).encode()).hexdigest()
    known = StageRules.objects.filter(pk=1).values_list("fingerprint", flat=True).first()
    keys = [key for key, _ in stages]
    params: dict = {"keys": keys}
    whens, dues = [], []
    for i, t in enumerate(translations):
        params.update(t.params)
        params[f"key{i}"] = keys[i]
        state = f"({t.state})"
        whens.append(f"WHEN {state} = 2 THEN %(key{i})s::text WHEN ({state} & 2) <> 0 THEN '?'")
        if t.due is not None:
            dues.append(t.due)
    eligible = "(c.merged_into_id IS NULL AND (c.stage = '' OR c.stage = ANY(%(keys)s::text[])))"
    due = "NULL::timestamptz" if not dues else dues[0] if len(dues) == 1 else f"LEAST({', '.join(dues)})"
    joins = " ".join(join for t in translations for join in t.joins)
    columns = (f"c.id, c.stage, CASE WHEN {eligible} THEN (CASE {' '.join(whens)} END) END AS target,"
               f" CASE WHEN {eligible} THEN {due} END AS due, r.xmin::text AS version, r.due_at AS was")
    customers, rechecks = Customer._meta.db_table, StageRecheck._meta.db_table
    moved = 0
    if known == fingerprint:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT customer_id FROM {rechecks} WHERE due_at <= %s ORDER BY customer_id", [now])
            due_ids = [pk for (pk,) in cursor.fetchall()]
        sql = (f"SELECT id, stage, target, due, version FROM (SELECT {columns} FROM {rechecks} AS r"
               f" JOIN {customers} AS c ON c.id = r.customer_id {joins}"
               f" WHERE r.customer_id = ANY(%(ids)s::bigint[]) OFFSET 0) AS q ORDER BY id")
        for i in range(0, len(due_ids), chunk):
            ids = due_ids[i:i + chunk]
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(sql, {**params, "ids": "{" + ",".join(map(str, ids)) + "}"})
                rows = cursor.fetchall()
                rechecks_drop_missing(StageRecheck, ids, [row[0] for row in rows])
            moved += _stage_rows_apply(rows, stages=stages, now=now)[0]  # those left are still due
        return moved
    # The rules changed (or never ran here): everyone once, returning only the customers who move
    # or whose moment changes.
    sql = (f"SELECT id, stage, target, due, version FROM (SELECT {columns} FROM {customers} AS c"
           f" LEFT JOIN {rechecks} AS r ON r.customer_id = c.id {joins}"
           f" WHERE c.id > %(after)s ORDER BY c.id OFFSET 0) AS q"
           f" WHERE COALESCE(target, stage) <> stage OR due IS DISTINCT FROM was LIMIT %(limit)s")
    last = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, {**params, "after": last, "limit": chunk})
            rows = cursor.fetchall()
        done, left = _stage_rows_apply(rows, stages=stages, now=now)
        moved += done
        # Those a worker held (or that changed meanwhile) may keep a moment of the old rules:
        # due now, marked once their locks are gone (this holds no customer).
        rechecks_mark(StageRecheck, sorted(left))
        if len(rows) < chunk:
            break
        last = rows[-1][0]
    StageRules.objects.update_or_create(pk=1, defaults={"fingerprint": fingerprint, "walked_at": now})
    return moved


def _stage_rows_apply(rows: list, *, stages: list[tuple[str, str]], now: datetime) -> tuple[int, set[int]]:
    """Apply one chunk of (id, stage, target or '?' or None, next moment, recheck version):
    how many moved, and the ids left as they were (held by a worker, or changed since)."""
    from journeys.services.segments import PROFILE_FIELDS

    if not rows:
        return 0, set()
    moves = [(pk, stage, target) for pk, stage, target, _, _ in rows if target not in (None, "?", stage)]
    unsure = [pk for pk, _, target, _, _ in rows if target == "?"]
    if unsure:
        customers = Customer.objects.filter(pk__in=unsure).only(*PROFILE_FIELDS)
        moves += _stage_targets(customers=customers, stages=stages, now=now)
    rechecks = {pk: (version, due) for pk, _, _, due, version in rows}
    return _stage_moves_apply(moves=sorted(moves), rules=dict(stages), now=now, rechecks=rechecks)


def _stage_targets(*, customers, stages: list[tuple[str, str]], now: datetime) -> list[Move]:
    """Python: the first true rule decides (as customer_evaluate_stage); no true rule, no move."""
    from journeys.rules import compile_rule
    from journeys.services.segments import customer_rule_contexts

    keys = {key for key, _ in stages}
    compiled = [(key, compile_rule(rule)) for key, rule in stages]
    moves = []
    for customer, ctx in customer_rule_contexts(customers=customers, now=now):
        if customer.stage and customer.stage not in keys:
            continue
        for key, rule in compiled:
            if rule.evaluate(ctx).value:
                if key != customer.stage:
                    moves.append((customer.pk, customer.stage, key))
                break
    return moves


def _stage_moves_apply(
    *, moves: list[Move], rules: dict[str, str], now: datetime, rechecks: dict[int, Recheck] | None = None
) -> tuple[int, set[int]]:
    """One transaction: lock, re-check, move, record transitions and events (set-based), and
    write the customers' next moments (`rechecks`, PostgreSQL) where nothing changed them since
    they were read. Returns how many moved and the ids of `rechecks` left as they were."""
    with transaction.atomic():
        locked = _customers_lock(sorted({pk for pk, _, _ in moves} | set(rechecks or ())))
        if rechecks is not None:
            # A customer changed since the statement read them (their recheck row was written) is
            # left due, unmoved: the next refresh reads them again.
            current = rechecks_claim(StageRecheck, sorted(pk for pk in rechecks if pk in locked))
            fresh = {pk for pk in current if current[pk] == rechecks[pk][0]}
            moves = [move for move in moves if move[0] in fresh]
        # A customer moved meanwhile (by a worker, or another refresh) keeps that move.
        moves = [move for move in moves if move[0] in locked and locked[move[0]][0] == move[1]]
        if moves:
            _stage_moves_write(moves=moves, rules=rules, locked=locked, now=now)
        if rechecks is None:
            return len(moves), set()
        dues = {pk: rechecks[pk][1] for pk in fresh}
        if counted_event_names(rules.values(), among=STAGE_EVENTS):
            for pk, _, _ in moves:  # their Stage events change what a rule counts: left due (the move marked them)
                dues.pop(pk, None)
        rechecks_write(StageRecheck, dues)
    return len(moves), set(rechecks) - fresh


def _stage_moves_write(*, moves: list[Move], rules: dict[str, str], locked: dict[int, tuple[str, str]],
                       now: datetime, quiet: bool = False) -> None:
    """Move and record the transitions; their Stage events too unless `quiet` (history)."""
    from journeys.engine.batch import rows_insert, rows_update
    from journeys.services.internal_events import InternalEvent, events_record_internal

    if connection.vendor == "postgresql":
        rows_update(Customer, [{"id": pk, "stage": to} for pk, _, to in moves], ["stage"], stamp=timezone.now())
    else:
        by_target: dict[str, list[int]] = {}
        for pk, _, to in moves:
            by_target.setdefault(to, []).append(pk)
        for to, pks in by_target.items():
            Customer.objects.filter(pk__in=pks).update(stage=to)
    transitions = rows_insert(
        StageTransition,
        [
            {"customer_id": pk, "from_stage": frm, "to_stage": to, "reason": f"{'history: ' if quiet else ''}rule: {rules[to]}"[:255],
             "at": now}
            for pk, frm, to in moves
        ],
        returning=("id", "customer_id", "from_stage", "to_stage"),
    )
    if quiet:
        return
    events = []
    for transition_id, pk, frm, to in sorted(transitions):
        user_id = locked[pk][1]
        if frm:
            events.append(InternalEvent(customer_id=pk, user_id=user_id, name="Stage Left", at=now,
                                        properties={"stage": frm, "to": to}, message_id=f"stage-left:{transition_id}"))
        events.append(InternalEvent(customer_id=pk, user_id=user_id, name="Stage Entered", at=now,
                                    properties={"stage": to, "from": frm}, message_id=f"stage-entered:{transition_id}"))
    events_record_internal(events=events)


def _customers_lock(ids: list[int]) -> dict[int, tuple[str, str]]:
    """Lock these customers in id order, skipping those another transaction holds:
    id -> (stage, user id). PostgreSQL gets the ids as one array literal (a long IN list
    of parameters is slow to quote)."""
    if connection.vendor != "postgresql":
        rows = Customer.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", "stage", "external_id")
        return {pk: (stage, user_id) for pk, stage, user_id in rows}
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, stage, external_id FROM {Customer._meta.db_table} WHERE id = ANY(%s::bigint[])"
            " ORDER BY id FOR NO KEY UPDATE SKIP LOCKED",  # only `stage` changes: a foreign key check may share it
            ["{" + ",".join(str(int(pk)) for pk in ids) + "}"],
        )
        return {pk: (stage, user_id) for pk, stage, user_id in cursor.fetchall()}
