"""Rechecks: when to look at a customer again for rules that time can change (PostgreSQL).

Two hourly refreshes read only the customers due instead of every customer: the lifecycle
stages (StageRecheck) and the segment-entry triggers (SegmentRecheck). Each table holds, per
customer, the earliest moment its rules' answer may change with time alone
(journeys.rules.sql.due); no row means it never does. A customer is due at once ('-infinity')
when their data changes: a database trigger on the customer table marks them (migrations 0023,
0025), and this module marks the customers of events a rule counts (a late event, one moved in a
merge or deleted, changes a count without changing the customer's row).

A refresh claims the rows of the customers it read (`rechecks_claim`, in id order, inserting
the missing ones) and writes their next moments (`rechecks_write`) only where the row's version
(xmin) is the one it read: a customer changed or marked in between stays due.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import connection, transaction

from journeys.rules.counted import counted_event_names

logger = logging.getLogger(__name__)


def rechecks_claim(model, ids: list[int]) -> dict[int, str | None]:
    """Lock these customers' rows in id order, inserting the missing ones (a mark, until
    written): id -> the version (xmin) of the row as it was, None where there was none. A mark
    made meanwhile by another transaction is waited for, and shows as a changed version."""
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} (customer_id, due_at)"
                       " SELECT id, '-infinity' FROM unnest(%s::bigint[]) AS id ORDER BY id"
                       " ON CONFLICT (customer_id) DO UPDATE SET due_at = EXCLUDED.due_at WHERE FALSE"
                       " RETURNING customer_id", [ids])
        made = {pk for (pk,) in cursor.fetchall()}
        cursor.execute(f"SELECT customer_id, xmin::text FROM {table} WHERE customer_id = ANY(%s::bigint[])", [ids])
        return {pk: None if pk in made else version for pk, version in cursor.fetchall()}


def rechecks_write(model, dues: dict[int, datetime | None]) -> None:
    """Each customer's next moment; no row for those whose answer time cannot change (and a
    `since` column, where the table has one, is cleared: they were compared)."""
    table = model._meta.db_table
    later = sorted((pk, due) for pk, due in dues.items() if due is not None)
    never = sorted(pk for pk, due in dues.items() if due is None)
    since = ", since = NULL" if _has_since(model) else ""
    with connection.cursor() as cursor:
        if later:
            cursor.execute(f"INSERT INTO {table} (customer_id, due_at)"
                           " SELECT * FROM unnest(%s::bigint[], %s::timestamptz[])"
                           f" ON CONFLICT (customer_id) DO UPDATE SET due_at = EXCLUDED.due_at{since}",
                           [[pk for pk, _ in later], [due for _, due in later]])
        if never:
            cursor.execute(f"DELETE FROM {table} WHERE customer_id = ANY(%s::bigint[])", [never])


def rechecks_mark(model, ids: list[int], since: datetime | None = None) -> None:
    """Due at the next refresh ('-infinity'), in id order. The tables have no foreign key in the
    database: a mark waits for no lock on the customer, and one for a customer deleted meanwhile
    is dropped by the next refresh. `since` (a table with that column): kept where already set,
    else set (left uncompared)."""
    if not ids:
        return
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if _has_since(model):
            cursor.execute(f"INSERT INTO {table} (customer_id, due_at, since)"
                           " SELECT id, '-infinity', %s::timestamptz FROM unnest(%s::bigint[]) AS id ORDER BY id"
                           " ON CONFLICT (customer_id) DO UPDATE SET due_at = EXCLUDED.due_at,"
                           f" since = COALESCE({table}.since, EXCLUDED.since)", [since, ids])
        else:
            cursor.execute(f"INSERT INTO {table} (customer_id, due_at)"
                           " SELECT id, '-infinity' FROM unnest(%s::bigint[]) AS id ORDER BY id"
                           " ON CONFLICT (customer_id) DO UPDATE SET due_at = EXCLUDED.due_at", [ids])


def rechecks_drop_missing(model, ids: list[int], found) -> None:
    """Of the due ids a refresh asked for, drop the rows of customers that no longer exist."""
    if missing := sorted(set(ids) - set(found)):
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {model._meta.db_table} WHERE customer_id = ANY(%s::bigint[])", [missing])


def _has_since(model) -> bool:
    return any(f.name == "since" for f in model._meta.concrete_fields)


def _counting() -> list[tuple[type, set[str | None]]]:
    """(recheck table, the event names its rules count) for each refresh whose rules count some."""
    from journeys.engine.compiled import trigger_index
    from journeys.engine.listeners import rule_stages
    from journeys.models import SegmentRecheck, StageRecheck

    tables = [(StageRecheck, counted_event_names(rule for _, rule in rule_stages())),
              (SegmentRecheck, counted_event_names(trigger_index().segment_rules))]
    return [(model, names) for model, names in tables if names]


def customers_recheck(events, guarded: bool = False) -> None:
    """Mark the customers of these events (customer id, event name; None: any name) due at the
    next refresh whose rules count events of that name: an event that arrives late (older than
    the customer's last one), moves in a merge or is deleted changes a count without changing
    the customer's row, which the database trigger watches (PostgreSQL; elsewhere every customer
    is evaluated every time). `guarded`: in a savepoint, and a failure is logged, not raised
    (the event processor's batch, whose last statement this is, must not fail on it)."""
    if connection.vendor != "postgresql":
        return
    for model, counted in _counting():
        ids = sorted({pk for pk, name in events if pk and (None in counted or name is None or name in counted)})
        if not ids:
            continue
        if not guarded:
            rechecks_mark(model, ids)
            continue
        for attempt in (1, 2):  # a deadlock's victim tries once more: the other side has gone on by then
            try:
                with transaction.atomic():
                    rechecks_mark(model, ids)
                break
            except Exception:  # it costs a late event's mark, not the batch
                logger.exception("marking %d customers in %s failed (attempt %d)", len(ids), model._meta.db_table,
                                 attempt)


def rechecks_counted_sql() -> tuple[str, list] | None:
    """A condition on event rows (`name`) for those a rule counts, for a caller that marks their
    customers itself (a partition about to be dropped); None when no rule counts any."""
    if connection.vendor != "postgresql":
        return None
    counted: set[str | None] = set().union(*(names for _, names in _counting()))
    if not counted:
        return None
    return ("TRUE", []) if None in counted else ("name = ANY(%s)", [sorted(counted)])  # type: ignore[type-var]
