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
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.db import connection, models
from django.db.models.constants import OnConflict
from django.db.models.sql import InsertQuery
from django.utils import timezone

from journeys.models import JourneyRun, StepExecution

_current: contextvars.ContextVar[EngineBatch | None] = contextvars.ContextVar("engine_batch", default=None)

RUN_STATE_FIELDS = ("status", "current_step", "next_wake_at", "wait_event", "variables", "visits", "converted_at",
                    "finished_at", "error")


def current_batch() -> EngineBatch | None:
    """The batch being processed in this thread, or None (single-event paths write at once)."""
    return _current.get()


class EngineBatch:
    """Rows of one batch that are written together (see the module docstring)."""

    def __init__(self, *, customer_ids: Iterable[int], now: datetime) -> None:
        self.customer_ids = set(customer_ids)
        self.now = now
        self.executions: list[StepExecution] = []
        self.runs: dict[int, JourneyRun] = {}
        self._extensions: dict[str, Any] = {}

    def extension(self, key: str, factory: Callable[[EngineBatch], Any]) -> Any:
        """The app's per-batch state (created on first use); it must have a `flush()` method."""
        found = self._extensions.get(key)
        if found is None:
            found = self._extensions[key] = factory(self)
        return found

    def add_execution(self, execution: StepExecution) -> None:
        self.executions.append(execution)

    def save_run(self, run: JourneyRun) -> None:
        self.runs[run.pk] = run

    def flush(self) -> None:
        """Write what was collected: app rows, step executions, then run states."""
        for extension in self._extensions.values():
            extension.flush()
        if self.executions:
            StepExecution.objects.bulk_create(self.executions, batch_size=500)
            self.executions = []
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


def _state_key(run: JourneyRun) -> str:
    return json.dumps([getattr(run, f) for f in RUN_STATE_FIELDS], sort_keys=True, default=str)


def runs_update(runs: list[JourneyRun]) -> None:
    """Save the state of many runs: one UPDATE per distinct state (most runs of a batch
    end alike, e.g. completed at the same step), not one per run."""
    groups: dict[str, list[JourneyRun]] = defaultdict(list)
    for run in runs:
        groups[_state_key(run)].append(run)
    stamp = timezone.now()
    for members in groups.values():
        first = members[0]
        JourneyRun.objects.filter(pk__in=[r.pk for r in members]).update(
            updated_at=stamp, **{f: getattr(first, f) for f in RUN_STATE_FIELDS}
        )
        for run in members:
            run.updated_at = stamp


def insert_ignore_returning(model: type[models.Model], objs: list[models.Model], returning: list[str]) -> list[tuple]:
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
            query = InsertQuery(model, on_conflict=OnConflict.IGNORE)
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
