"""Set-based writes for one `events_process` batch.

While a batch is active, the runner does not write a StepExecution row or save a
run after every step: it collects them here and `flush()` writes them with one
INSERT and one UPDATE per distinct end state. Step kinds that are written for it
(`StepKind.batch_safe`, e.g. send_message) keep their rows in an *extension* of
the batch (`batch.extension(key, factory)`) that is flushed together, so an app
can batch its writes without journeys importing it. Before any other kind with
side effects runs, the batch is flushed, so that kind sees the rows it expects.

Everything is written inside the caller's transaction: a retried task either
finds all of it committed or none of it.
"""

from __future__ import annotations

import contextvars
import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, time
from decimal import Decimal
from functools import lru_cache
from typing import Any
from uuid import UUID

from django.db import connection, models
from django.db.models.base import ModelState
from django.db.models.constants import OnConflict
from django.db.models.expressions import RawSQL
from django.db.models.sql import InsertQuery
from django.utils import timezone

from journeys.models import JourneyRun, StepExecution

_current: contextvars.ContextVar[EngineBatch | None] = contextvars.ContextVar("engine_batch", default=None)

FLUSH_ROUNDS = 20  # start_workflow steps chained within one flush (one round each)

RUN_STATE_FIELDS = ("status", "current_step", "next_wake_at", "wait_event", "variables", "visits", "converted_at",
                    "finished_at", "error")


def skip_locked() -> dict:
    """select_for_update() arguments that claim rows without waiting for another worker's
    (PostgreSQL's SKIP LOCKED); SQLite serialises writers anyway and has no row locks."""
    return {"skip_locked": True} if connection.features.has_select_for_update_skip_locked else {}


def ids_in(column: str, ids: list[int]) -> tuple[str, list]:
    """A `column IN (ids)` condition for raw SQL: on PostgreSQL one array parameter (= ANY(%s));
    psycopg splits and quotes a query of thousands of placeholders slowly. Elsewhere an IN list."""
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s)", [list(ids)]
    return f"{column} IN ({', '.join(['%s'] * len(ids))})", list(ids)


def ids_lateral(ids: list[int], inner: str) -> tuple[str, list]:
    """PostgreSQL: a FROM clause that runs `inner` (a SELECT reading `ids.id`) once per id, through
    the index the inner query's conditions name. Use it for `workflow_id = %s AND customer_id = ANY(ids)`
    shapes: with statistics that have not seen the workflow yet (a new broadcast, minutes old), the
    planner reads every row of the workflow and tests each against the whole array (seconds per page,
    growing with the audience); `OFFSET 0` keeps the inner query from being flattened into that plan."""
    return f"unnest(%s::bigint[]) AS ids(id) CROSS JOIN LATERAL ({inner} OFFSET 0) AS hit", [list(ids)]


def ids_q(field: str, ids: list[int]) -> models.Q:
    """`field__in=ids` for the ORM; on PostgreSQL `IN (SELECT unnest(%s))` with one array parameter."""
    if connection.vendor == "postgresql":
        return models.Q(**{f"{field}__in": RawSQL("SELECT unnest(%s::bigint[])", [list(ids)])})
    return models.Q(**{f"{field}__in": list(ids)})


def customer_waves(items: list, customer_id: Callable[[Any], int | tuple[int, ...] | None]) -> list[list]:
    """Split a batch so that a customer appears at most once per wave (the n-th item of every
    customer is in wave n): a customer's items still act in order, and the work of one wave is
    independent per customer. Items without a customer all go in the first wave. An item of
    several customers (a merge: the absorbed and the surviving profile) goes in the first wave
    after the last one holding any of them."""
    waves: list[list] = []
    seen: dict[int, int] = {}
    for item in items:
        key = customer_id(item)
        keys = () if key is None else key if isinstance(key, tuple) else (key,)
        n = max((seen.get(k, 0) for k in keys), default=0)
        for k in keys:
            seen[k] = n + 1
        if n == len(waves):
            waves.append([])
        waves[n].append(item)
    return waves


class IdMap(models.Func):
    """The value a {id: value} mapping gives for an id (a column, or an OuterRef in a subquery),
    computed by the database: the mapping travels as one JSON parameter whatever its size. One
    UPDATE moves the rows of many customers each to its own survivor
    (`.update(customer=IdMap(F("customer_id"), {absorbed: survivor}))`), or ends runs each with
    its customer's message (`output_field=TextField()`); an id the mapping lacks gives NULL.
    Values are integers (ids) unless `output_field` says otherwise."""

    def __init__(self, expression: Any, mapping: dict[int, Any], output_field: models.Field | None = None) -> None:
        document = json.dumps({str(k): v for k, v in mapping.items()}, separators=(",", ":"))
        super().__init__(expression, models.Value(document), output_field=output_field or models.BigIntegerField())

    def as_sql(self, compiler, connection, **extra_context):  # noqa: ANN001, ANN201 - Django's signature
        (key, key_params), (document, document_params) = (compiler.compile(e) for e in self.get_source_expressions())
        params = [*document_params, *key_params]
        if connection.vendor == "postgresql":
            value = f"(({document})::jsonb ->> ({key})::text)"
            return (f"{value}::bigint" if isinstance(self.output_field, models.IntegerField) else value), params
        return f"json_extract({document}, '$.\"' || ({key}) || '\"')", params


def rows_move(rows: models.QuerySet, pairs: Iterable[tuple[models.Model, models.Model]],
              field: str = "customer") -> int:
    """Point the rows of `rows` whose `field` is the first of a (from, to) pair at the second (an
    absorbed profile's rows at its survivor): one UPDATE whatever the number of pairs; returns how
    many rows moved."""
    moves = {old.pk: new.pk for old, new in pairs}
    if not moves:
        return 0
    column = rows.model._meta.get_field(field).attname
    return rows.filter(ids_q(column, list(moves))).update(**{field: IdMap(models.F(column), moves)})


def current_batch() -> EngineBatch | None:
    """The batch being processed in this thread, or None (single-event paths write at once)."""
    return _current.get()


class EngineBatch:
    """Rows of one batch that are written together (see the module docstring)."""

    def __init__(self, *, customer_ids: Iterable[int], now: datetime) -> None:
        self.customer_ids = set(customer_ids)
        self.now = now
        self.executions: list[dict] = []
        self._waiting: dict[tuple[int, str, int], dict] = {}  # unfinished rows of self.executions
        # (outcome, finished_at) -> (step_key, visit) -> run ids: rows to finish at the flush
        self._closes: dict[tuple[str, datetime], dict[tuple[str, int], list[int]]] = defaultdict(lambda: defaultdict(list))
        self._answers: list[tuple[int, str, int, int]] = []  # (run, step, visit, event): answered_by to record
        self.runs: dict[int, JourneyRun] = {}
        self._extensions: dict[str, Any] = {}

    def extension(self, key: str, factory: Callable[[EngineBatch], Any]) -> Any:
        """The app's per-batch state (created on first use); it must have a `flush()` method."""
        found = self._extensions.get(key)
        if found is None:
            found = self._extensions[key] = factory(self)
        return found

    def add_execution(self, row: dict) -> None:
        """A StepExecution as a plain row (attname -> value), inserted by `flush()`."""
        self.executions.append(row)
        if row.get("finished_at") is None:
            self._waiting[(row["run_id"], row["step_key"], row["visit"])] = row

    def close_step(self, *, run_id: int, step_key: str, visit: int, outcome: str, finished_at: datetime,
                   answered_by: int | None = None) -> None:
        """Finish a waiting step's row (a resumed run): in memory when the batch holds it, else
        by `flush()`, with one UPDATE per outcome for every run resumed anywhere (whatever step and visit).
        `answered_by`: the event that answered the wait, recorded in the row's detail."""
        row = self._waiting.pop((run_id, step_key, visit), None)
        if row is not None:
            row["outcome"], row["finished_at"] = outcome, finished_at
            if answered_by is not None:
                row["detail"] = {**(row.get("detail") or {}), "answered_by": answered_by}
            return
        self._closes[(outcome, finished_at)][(step_key, visit)].append(run_id)
        if answered_by is not None:
            self._answers.append((run_id, step_key, visit, answered_by))

    def answered_held(self, run_ids: Iterable[int]) -> dict[int, set[int]]:
        """run id -> the events that answered its waits, of the rows this batch holds (not written yet)."""
        wanted, found = set(run_ids), defaultdict(set)
        for row in self.executions:
            answer = (row.get("detail") or {}).get("answered_by")
            if answer is not None and row["run_id"] in wanted:
                found[row["run_id"]].add(answer)
        for run_id, _, _, answer in self._answers:
            if run_id in wanted:
                found[run_id].add(answer)
        return found

    def save_run(self, run: JourneyRun) -> None:
        self.runs[run.pk] = run

    def flush(self) -> None:
        """Write what was collected: app rows, step executions, then run states.

        An extension's `flush()` may set off more work in the batch (journeys.engine.moves
        starts the runs a start_workflow step enrolled, and their steps add rows to the other
        extensions): it then returns True and every extension is flushed again."""
        self._flush_closes()
        for _ in range(FLUSH_ROUNDS):
            if not any([bool(extension.flush()) for extension in list(self._extensions.values())]):
                break
        else:
            raise RuntimeError(f"the batch's steps still set off more work after {FLUSH_ROUNDS} rounds "
                               "(start_workflow steps that move customers round a circle?)")
        self._flush_closes()  # what the extensions resumed (journeys.engine.waits) of rows written before
        if self.executions:
            rows_insert(StepExecution, self.executions)
            self.executions, self._waiting = [], {}
        self.flush_runs()

    def close_held(self, runs: models.QuerySet, *, outcome: str, finished_at: datetime) -> None:
        """Finish the unfinished step rows this batch still holds of the runs of `runs` (runs that
        end now: the steps they wait at end with them); one SELECT, only when it holds such rows."""
        if not self._waiting:
            return
        held = {run_id for run_id, _, _ in self._waiting}
        ending = set(runs.filter(ids_q("pk", list(held))).values_list("pk", flat=True))
        for run_id, step_key, visit in [key for key in self._waiting if key[0] in ending]:
            self.close_step(run_id=run_id, step_key=step_key, visit=visit, outcome=outcome, finished_at=finished_at)

    def _flush_closes(self) -> None:
        """One UPDATE per (outcome, time) for runs waiting at any steps and visits (a reminder loop's
        runs wait at different visits of one step): on PostgreSQL a join of the (run, step, visit)
        list with the unique index (an OR of semi-joins would be a scan of the whole table);
        elsewhere an OR of (step, visit) groups, each a range of that index."""
        for (outcome, finished_at), groups in self._closes.items():
            if connection.vendor == "postgresql":
                keys = [(run_id, step_key, visit) for (step_key, visit), run_ids in groups.items() for run_id in run_ids]
                table = connection.ops.quote_name(StepExecution._meta.db_table)
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"UPDATE {table} AS s SET outcome = %s, finished_at = %s "
                        "FROM unnest(%s::bigint[], %s::text[], %s::int[]) AS x(run_id, step_key, visit) "
                        "WHERE s.run_id = x.run_id AND s.step_key = x.step_key AND s.visit = x.visit "
                        "AND s.finished_at IS NULL",
                        [outcome, finished_at, *map(list, zip(*keys))])
                continue
            where = models.Q()
            for (step_key, visit), run_ids in groups.items():
                where |= models.Q(run_id__in=run_ids, step_key=step_key, visit=visit)
            StepExecution.objects.filter(where, finished_at__isnull=True).update(outcome=outcome, finished_at=finished_at)
        self._closes.clear()
        answers, self._answers = self._answers, []
        if answers:
            answers_record(answers)

    def flush_runs(self) -> None:
        """Write the run states collected so far (before an action that reads runs)."""
        if self.runs:
            runs_update(list(self.runs.values()))
            self.runs = {}

    @contextmanager
    def active(self) -> Iterator[EngineBatch]:
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)


@contextmanager
def batch_suspended() -> Iterator[None]:
    """Run code that must write at once (a fallback path) although a batch is active."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


def runs_update(runs: list[JourneyRun]) -> None:
    """Save the state of many runs (rows_set: one statement on PostgreSQL, one per distinct
    end state elsewhere; most runs of a batch end alike, e.g. completed at the same step)."""
    stamp = timezone.now()
    rows_set(JourneyRun, [{"id": r.pk, **{f: getattr(r, f) for f in RUN_STATE_FIELDS}} for r in runs],
             RUN_STATE_FIELDS, stamp=stamp)
    for run in runs:
        run.updated_at = stamp


def rows_set(model: type[models.Model], rows: list[dict], fields: Iterable[str], *, stamp: datetime) -> None:
    """Set `fields` of many rows, each to its own values (each row: "id" and those attnames).

    PostgreSQL: one UPDATE ... FROM jsonb_to_recordset for all of them (a long `id IN (...)`
    list made psycopg split a query of thousands of placeholders: 18% of a worker's time).
    Elsewhere: one UPDATE per distinct set of values; auto_now fields get `stamp`."""
    fields = tuple(fields)
    if not rows:
        return
    if connection.vendor == "postgresql":
        rows_update(model, rows, fields, stamp=stamp)
        return
    groups: dict[str, list] = defaultdict(list)
    for row in rows:
        groups[json.dumps([row[f] for f in fields], sort_keys=True, default=str)].append(row)
    auto = {f.attname: stamp for f in model._meta.concrete_fields if getattr(f, "auto_now", False)}
    for members in groups.values():
        model._base_manager.filter(pk__in=[r["id"] for r in members]).update(
            **auto, **{f: members[0][f] for f in fields})


def json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a bulk row")


@lru_cache(maxsize=64)
def _recordset_sql(model: type[models.Model], attnames: tuple[str, ...], ignore_conflicts: bool,
                   returning: tuple[str, ...]) -> tuple[str, list]:
    """INSERT ... SELECT FROM jsonb_to_recordset(%s) for these row keys; fields the rows leave
    out get their default (auto_now fields: the statement's clock) as a parameter."""
    opts, qn = model._meta, connection.ops.quote_name
    given = [opts.get_field(name) for name in attnames]
    targets = [qn(f.column) for f in given]
    selects = [f"x.{qn(f.attname)}" for f in given]
    constants: list = []
    for f in opts.concrete_fields:
        if f.attname in attnames or f.primary_key:
            continue
        targets.append(qn(f.column))
        if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            selects.append("statement_timestamp()")
            continue
        db_type = f.db_type(connection)
        selects.append(f"%s::{db_type}")
        default = f.get_default() if f.has_default() else None
        constants.append(json.dumps(default) if db_type == "jsonb" else default)
    columns = ", ".join(f"{qn(f.attname)} {f.db_type(connection)}" for f in given)
    sql = (f"INSERT INTO {qn(opts.db_table)} ({', '.join(targets)}) SELECT {', '.join(selects)} "
           f"FROM jsonb_to_recordset(%s::jsonb) AS x({columns})")
    if ignore_conflicts:
        sql += " ON CONFLICT DO NOTHING"
    if returning:
        sql += " RETURNING " + ", ".join(qn(opts.get_field(name).column) for name in returning)
    return sql, constants


def rows_insert(model: type[models.Model], rows: list[dict], *, ignore_conflicts: bool = False,
                returning: Iterable[str] = ()) -> list[tuple]:
    """Insert plain rows (attname -> value; every row with the same keys) in one statement.

    PostgreSQL: the rows travel as one JSON document (`jsonb_to_recordset`), encoded by
    json's C encoder, instead of Django preparing every value of a model instance and
    psycopg quoting them one by one (~35% of a worker's CPU before). SQLite: the values
    prepared by their fields (as Django's bulk INSERT does, without building model
    instances and compiling a query per row: ~5x faster), multi-row INSERTs. No signals
    either way, as with bulk_create. With `ignore_conflicts`, rows that hit a unique
    constraint are skipped; `returning` names the fields of the inserted rows to return.
    """
    if not rows:
        return []
    returning = tuple(returning)
    if connection.vendor == "sqlite":
        return _sqlite_rows_insert(model, rows, ignore_conflicts, returning)
    if connection.vendor != "postgresql":
        objs = [model(**row) for row in rows]
        if ignore_conflicts or returning:
            return insert_ignore_returning(model, objs, list(returning or ("id",)), ignore_conflicts=ignore_conflicts)
        model.objects.bulk_create(objs, batch_size=500)
        return []
    sql, constants = _recordset_sql(model, tuple(rows[0]), ignore_conflicts, returning)
    out: list[tuple] = []
    with connection.cursor() as cursor:
        for i in range(0, len(rows), 5000):
            cursor.execute(sql, [*constants, json.dumps(rows[i : i + 5000], default=json_default)])
            if returning:
                out.extend(cursor.fetchall())
    return out


def _sqlite_rows_insert(model: type[models.Model], rows: list[dict], ignore_conflicts: bool,
                        returning: tuple[str, ...]) -> list[tuple]:
    """rows_insert on SQLite: INSERT [OR IGNORE] ... VALUES (...), (...) [RETURNING ...]."""
    opts, qn = model._meta, connection.ops.quote_name
    given = [opts.get_field(name) for name in rows[0]]
    stamp = timezone.now()
    rest, constants = [], []
    for f in opts.concrete_fields:
        if f.attname in rows[0] or f.primary_key:
            continue
        auto = getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
        rest.append(f)
        constants.append(f.get_db_prep_save(stamp if auto else f.get_default(), connection))
    columns = ", ".join(qn(f.column) for f in (*given, *rest))
    one = "(" + ", ".join(["%s"] * (len(given) + len(rest))) + ")"
    head = f"INSERT {'OR IGNORE ' if ignore_conflicts else ''}INTO {qn(opts.db_table)} ({columns}) VALUES "
    tail = (" RETURNING " + ", ".join(qn(opts.get_field(name).column) for name in returning)) if returning else ""
    preps = [(f.attname, f.get_db_prep_save) for f in given]
    variables = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999  # SQLite's limit (Django assumes 999)
    per_statement = max(1, min(500, variables // (len(given) + len(rest))))
    out: list[tuple] = []
    with connection.cursor() as cursor:
        for i in range(0, len(rows), per_statement):
            chunk = rows[i : i + per_statement]
            params = [value for row in chunk
                      for value in (*(prep(row[name], connection) for name, prep in preps), *constants)]
            cursor.execute(head + ", ".join([one] * len(chunk)) + tail, params)
            if returning:
                out.extend(cursor.fetchall())
    return out


def rows_update(model: type[models.Model], rows: list[dict], fields: Iterable[str], *, stamp: datetime) -> None:
    """PostgreSQL only: set `fields` of many rows (each row: "id" and those attnames) with one
    UPDATE ... FROM jsonb_to_recordset; auto_now fields get `stamp`."""
    if not rows:
        return
    opts, qn = model._meta, connection.ops.quote_name
    given = [opts.get_field(name) for name in fields]
    pk = opts.pk
    sets = [f"{qn(f.column)} = x.{qn(f.attname)}" for f in given]
    sets += [f"{qn(f.column)} = %s" for f in opts.concrete_fields if getattr(f, "auto_now", False)]
    columns = ", ".join(f"{qn(f.attname)} {f.db_type(connection)}" for f in (pk, *given))
    table = qn(opts.db_table)
    sql = (f"UPDATE {table} SET {', '.join(sets)} FROM jsonb_to_recordset(%s::jsonb) AS x({columns}) "
           f"WHERE {table}.{qn(pk.column)} = x.{qn(pk.attname)}")
    stamps = [stamp] * sum(1 for f in opts.concrete_fields if getattr(f, "auto_now", False))
    with connection.cursor() as cursor:
        cursor.execute(sql, [*stamps, json.dumps(rows, default=json_default)])


@lru_cache(maxsize=64)
def _blank(model: type[models.Model]) -> tuple[dict, tuple]:
    constants, factories = {}, []
    for f in model._meta.concrete_fields:
        if f.has_default() and callable(f.default):
            factories.append((f.attname, f.default))
        else:
            constants[f.attname] = f.get_default()
    return constants, tuple(factories)


def instance_new(model: type[models.Model], values: dict, related: dict | None = None) -> models.Model:
    """A new (unsaved) instance without Model.__init__ (~25 us less each; a batch builds
    thousands): field defaults, then `values` by attname, then `related` objects by field
    name (their ids set and the objects cached, as assigning them would). Only for models
    with no pre_init/post_init receivers and no __init__ of their own."""
    obj = model.__new__(model)
    state = obj._state = ModelState()
    constants, factories = _blank(model)
    data = obj.__dict__
    data.update(constants)
    for name, factory in factories:
        data[name] = factory()
    data.update(values)
    for name, other in (related or {}).items():
        data[model._meta.get_field(name).attname] = other.pk if other is not None else None
        state.fields_cache[name] = other
    return obj


def objects_insert(model: type[models.Model], objs: list[models.Model], *, ignore_conflicts: bool = False,
                   returning: Iterable[str] = ()) -> list[tuple]:
    """`rows_insert` for model instances built in memory (their auto_now fields are stamped)."""
    if not objs:
        return []
    opts = model._meta
    stamp = timezone.now()
    auto = [f.attname for f in opts.concrete_fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)]
    for obj in objs:
        for name in auto:
            setattr(obj, name, stamp)
    names = [f.attname for f in opts.concrete_fields if not f.primary_key or objs[0].pk is not None]
    rows = [{name: getattr(obj, name) for name in names} for obj in objs]
    out = rows_insert(model, rows, ignore_conflicts=ignore_conflicts, returning=returning)
    if not ignore_conflicts:
        for obj in objs:
            obj._state.adding, obj._state.db = False, connection.alias
    return out


def insert_ignore_returning(model: type[models.Model], objs: list[models.Model], returning: list[str],
                            ignore_conflicts: bool = True) -> list[tuple]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING <returning> (PostgreSQL and SQLite >= 3.35).

    Rows that hit a unique constraint (a duplicate from a retried or concurrent task,
    a second open run) are skipped without a savepoint; only inserted rows come back.
    """
    if not objs:
        return []
    opts = model._meta
    fields = [f for f in opts.concrete_fields if not f.primary_key]
    out: list[tuple] = []
    with connection.cursor() as cursor:
        for i in range(0, len(objs), 500):
            query = InsertQuery(model, on_conflict=OnConflict.IGNORE if ignore_conflicts else None)
            query.insert_values(fields, objs[i : i + 500])
            compiler = query.get_compiler(connection=connection)
            compiler.returning_fields = [opts.get_field(name) for name in returning]
            for sql, params in compiler.as_sql():
                cursor.execute(sql, params)
                out.extend(cursor.fetchall())
    return out


def reserve_ids(model: type[models.Model], count: int) -> list[int]:
    """Primary keys for rows that are built (and referenced) before one bulk INSERT.

    PostgreSQL: the column's sequence, one statement. SQLite: the range is claimed in
    sqlite_sequence (AUTOINCREMENT's counter) under the transaction's write lock, so no
    other writer takes these ids; SQLite keeps the lock until the caller commits.
    """
    table, column = model._meta.db_table, model._meta.pk.column
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)", [table, column, count]
            )
            return [row[0] for row in cursor.fetchall()]
        # A write statement first: it takes the write lock (if this transaction has not yet),
        # so nobody can insert between reading the top id and claiming the range.
        cursor.execute("UPDATE sqlite_sequence SET seq = seq WHERE name = %s", [table])
        cursor.execute(
            f'SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = %s), 0), '
            f'coalesce((SELECT max("{column}") FROM "{table}"), 0))',
            [table],
        )
        start = cursor.fetchone()[0] + 1
        # Claim the range: later inserts (ours or, after commit, anyone's) number above it.
        cursor.execute("UPDATE sqlite_sequence SET seq = %s WHERE name = %s", [start + count - 1, table])
        if cursor.rowcount == 0:
            cursor.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)", [table, start + count - 1])
        return list(range(start, start + count))


def answers_record(answers: list[tuple[int, str, int, int]]) -> None:
    """Record `answered_by` (the event that answered the wait) on the rows of waits answered, given
    as (run, step, visit, event): one UPDATE (elsewhere than PostgreSQL one per 500 rows)."""
    table = connection.ops.quote_name(StepExecution._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"UPDATE {table} AS s SET detail = s.detail || jsonb_build_object('answered_by', x.event) "
                "FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::bigint[]) AS x(run_id, step_key, visit, event) "
                "WHERE s.run_id = x.run_id AND s.step_key = x.step_key AND s.visit = x.visit",
                list(map(list, zip(*answers))))
            return
        for i in range(0, len(answers), 500):
            chunk = answers[i : i + 500]
            match = " OR ".join(["(run_id = %s AND step_key = %s AND visit = %s)"] * len(chunk))
            cases = " ".join(["WHEN run_id = %s AND step_key = %s AND visit = %s THEN %s"] * len(chunk))
            cursor.execute(f"UPDATE {table} SET detail = json_set(detail, '$.answered_by', CASE {cases} END) "
                           f"WHERE {match}", [v for a in chunk for v in a] + [v for a in chunk for v in a[:3]])
