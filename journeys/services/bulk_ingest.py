"""Set-based writes for ingestion: a batch costs a few statements, not one per event.

PostgreSQL gets single statements over `jsonb_to_recordset(<one JSON document>)`
(measured: the ORM's bulk_update built a CASE/WHEN per row and field and was half
of all ingestion CPU; then one array parameter per column still spent a fifth of
the CPU in psycopg's Python array quoting, where one json.dumps of the rows is
done in C). SQLite, the local default, uses the ORM's bulk operations (events: a plain
INSERT ... ON CONFLICT, see `_sqlite_events_insert`). Rows are
written in a fixed order (customer id, identity kind/value), and a batch locks
the identity keys it may insert before its first insert (`identity_keys_lock`),
so concurrent batches never deadlock.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from datetime import datetime

from django.db import connection
from django.db.models import JSONField
from django.utils import timezone

from journeys.choices import EventType, IdentityKind
from journeys.models import Customer, Event, EventKey, Identity, SegmentRecheck, StageRecheck

CUSTOMER_COLUMNS = ["external_id", "email", "phone", "timezone", "locale", "traits", "first_seen", "last_seen", "updated_at"]


def _pg() -> bool:
    return connection.vendor == "postgresql"


def _pg_column_type(field) -> str:
    if isinstance(field, JSONField):
        return "jsonb"
    kind = field.db_type(connection)
    return {"serial": "integer", "bigserial": "bigint"}.get(kind, kind).split("(")[0]


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _pg_recordset(fields, rows: list[dict], *, with_id: bool = False) -> tuple[str, str, str]:
    """(JSON document of `rows` ({column: value}), `v(column type, ...)` definition, column list)
    for `jsonb_to_recordset`: one parameter for the whole batch; JSON columns travel as nested
    JSON (no second encoding), timestamps as ISO-8601 text (json's C encoder calls back only
    for those)."""
    definition = ", ".join((['"id" bigint'] if with_id else []) + [f'"{f.column}" {_pg_column_type(f)}' for f in fields])
    document = json.dumps(rows, separators=(",", ":"), default=_json_default)
    return document, definition, ", ".join(f'"{f.column}"' for f in fields)


def customers_save(customers: Iterable[Customer]) -> None:
    """Write the profile columns ingestion changes, for many customers at once. Every column is
    written from the in-memory copy: the batch read it under its row lock (`IdentityMap.customers_lock`),
    so no concurrent change is overwritten."""
    rows = sorted(customers, key=lambda c: c.pk)
    if not rows:
        return
    now = timezone.now()
    for c in rows:
        c.updated_at = now
    if not _pg():
        Customer.objects.bulk_update(rows, CUSTOMER_COLUMNS, batch_size=500)
        return
    fields = [Customer._meta.get_field(name) for name in CUSTOMER_COLUMNS]
    document, definition, _ = _pg_recordset(
        fields, [{"id": c.pk, **{f.column: getattr(c, f.attname) for f in fields}} for c in rows], with_id=True)
    sets = ", ".join(f'"{f.column}" = v."{f.column}"' for f in fields)
    with connection.cursor() as cur:
        cur.execute(
            f"UPDATE journeys_customer c SET {sets} FROM jsonb_to_recordset(%s::jsonb) AS v({definition})"
            " WHERE c.id = v.id",
            [document],
        )


_EVENT_SEQUENCE: dict[str, str] = {}


def event_id_sequence() -> str:
    """The id sequence of journeys_event (the partitioned table's identity), looked up once."""
    alias = connection.alias
    if alias not in _EVENT_SEQUENCE:
        with connection.cursor() as cur:
            cur.execute("SELECT pg_get_serial_sequence(%s, 'id')", [Event._meta.db_table])
            _EVENT_SEQUENCE[alias] = cur.fetchone()[0]
    return _EVENT_SEQUENCE[alias]


def events_insert(rows: list[dict]) -> list[int]:
    """Insert events given as {field attname: value} (fields left out take the model's default),
    skipping (source, message_id) already received; returns the new ids.

    The (source, message_id) is claimed in EventKey first (`ON CONFLICT DO NOTHING`), so a
    concurrent request carrying the same messageId waits for this one and then skips it; only
    rows whose key was claimed become events. Plain dicts, not Event instances: building a
    model instance per event cost ~10% of ingestion CPU, and on PostgreSQL nothing needs one.
    """
    if not rows:
        return []
    fields = [f for f in Event._meta.concrete_fields if not f.primary_key]
    if not _pg():
        return _sqlite_events_insert(fields, rows)
    defaults = {f.column: f.get_default() for f in fields if f.attname not in rows[0]}
    columns = {f.attname: f.column for f in fields}
    if all(a == c for a, c in columns.items()):
        records = [{**defaults, **row} for row in rows]
    else:  # pragma: no cover - every Event column is named after its attribute today
        records = [{**defaults, **{columns[k]: v for k, v in row.items()}} for row in rows]
    document, definition, names = _pg_recordset(fields, records)
    key_table = EventKey._meta.db_table
    with connection.cursor() as cur:
        # One statement: number the rows, claim their keys, insert the rows whose key was claimed.
        cur.execute(
            f"WITH v AS MATERIALIZED (SELECT nextval(%s::regclass) AS id, * FROM jsonb_to_recordset(%s::jsonb) AS r({definition})),"
            f" k AS (INSERT INTO {key_table} (source_id, message_id, received_at, event_id)"
            "  SELECT source_id, message_id, received_at, id FROM v ON CONFLICT (source_id, message_id) DO NOTHING"
            "  RETURNING event_id)"
            f" INSERT INTO {Event._meta.db_table} (id, {names}) SELECT v.id, {', '.join('v.' + n for n in names.split(', '))}"
            " FROM v JOIN k ON k.event_id = v.id RETURNING id",
            [event_id_sequence(), document],
        )
        return sorted(r[0] for r in cur.fetchall())


def _sqlite_events_insert(fields, rows: list[dict]) -> list[int]:
    """SQLite (one writer at a time: nothing can claim a key between the check and the insert):
    skip keys already received, insert the events, then their keys. A value SQLite cannot store
    fails the insert loudly (never counted as a duplicate)."""
    quote = connection.ops.quote_name
    received: set[tuple[int, str]] = set()
    by_source: dict[int, list[str]] = {}
    for row in rows:
        by_source.setdefault(row["source_id"], []).append(row["message_id"])
    for source_id, mids in by_source.items():
        for i in range(0, len(mids), 900):
            received.update((source_id, m) for m in EventKey.objects.filter(
                source_id=source_id, message_id__in=mids[i : i + 900]).values_list("message_id", flat=True))
    fresh, seen = [], set(received)
    for row in rows:
        key = (row["source_id"], row["message_id"])
        if key not in seen:
            seen.add(key)
            fresh.append(row)
    if not fresh:
        return []
    received_at = {(row["source_id"], row["message_id"]): row["received_at"] for row in fresh}
    names = ", ".join(quote(f.column) for f in fields)
    defaults = {f.attname: f.get_default() for f in fields if f.attname not in fresh[0]}
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    size = connection.ops.bulk_batch_size(fields, fresh)
    keys: list[EventKey] = []
    with connection.cursor() as cur:
        for i in range(0, len(fresh), size):
            chunk = fresh[i : i + size]
            params = []
            for row in chunk:
                full = {**defaults, **row}
                params.extend(f.get_db_prep_save(full[f.attname], connection) for f in fields)
            cur.execute(
                f"INSERT INTO {quote(Event._meta.db_table)} ({names}) VALUES {', '.join([placeholders] * len(chunk))}"
                " RETURNING id, source_id, message_id",
                params,
            )
            keys.extend(EventKey(event_id=r[0], source_id=r[1], message_id=r[2], received_at=received_at[(r[1], r[2])])
                        for r in cur.fetchall())
    EventKey.objects.bulk_create(keys, batch_size=500)
    return sorted(k.event_id for k in keys)  # RETURNING's order is arbitrary in SQLite


def identities_insert(rows: list[tuple[str, str, int]]) -> None:
    """Insert (kind, value, customer id) identities in (kind, value) order, so that concurrent
    batches take the unique index's locks in one order and cannot deadlock; a key that exists
    already (a concurrent request stored it first) is left to its owner."""
    rows = sorted(rows)
    if not rows:
        return
    if not _pg():
        Identity.objects.bulk_create([Identity(kind=k, value=v, customer_id=c) for k, v, c in rows],
                                     ignore_conflicts=True, batch_size=500)
        return
    now = timezone.now()
    fields = [Identity._meta.get_field(name) for name in ("kind", "value", "customer", "created_at")]
    document, definition, names = _pg_recordset(
        fields, [{"kind": k, "value": v, "customer_id": c, "created_at": now} for k, v, c in rows])
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {Identity._meta.db_table} ({names}) SELECT {names}"
            f" FROM jsonb_to_recordset(%s::jsonb) AS v({definition}) ORDER BY kind, value ON CONFLICT DO NOTHING",
            [document],
        )


def identities_find(keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """{(kind, value): customer id} for the keys that exist. PostgreSQL: one statement joining
    the keys (one JSON parameter) to the unique index, not an IN list per kind."""
    found: dict[tuple[str, str], int] = {}
    if not keys:
        return found
    if not _pg():
        by_kind: dict[str, list[str]] = {}
        for kind, value in keys:
            by_kind.setdefault(kind, []).append(value)
        for kind, values in by_kind.items():
            for i in range(0, len(values), 900):
                for value, cid in Identity.objects.filter(kind=kind, value__in=values[i : i + 900]).values_list(
                    "value", "customer_id"
                ):
                    found[(kind, value)] = cid
        return found
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT i.kind, i.value, i.customer_id FROM jsonb_to_recordset(%s::jsonb) AS k(kind text, value text)"
            f" JOIN {Identity._meta.db_table} i ON i.kind = k.kind AND i.value = k.value",
            [json.dumps([{"kind": kind, "value": value} for kind, value in keys], separators=(",", ":"))],
        )
        for kind, value, cid in cur.fetchall():
            found[(kind, value)] = cid
    return found


# Advisory lock ids (the two-int form, so nothing else's single-bigint locks can collide).
NEW_KEY_LOCK = 0x1D3E  # (NEW_KEY_LOCK, hashtext('kind:value')): a key this transaction may insert
NEW_KEYS_GATE = 0x1D3F  # (NEW_KEYS_GATE, 0): shared by every batch that locks keys, exclusive for a big one
MAX_KEY_LOCKS = 512  # PostgreSQL's lock table is shared: max_locks_per_transaction (64) x connections


def identity_keys_lock(keys: Collection[tuple[str, str]]) -> bool:
    """Before a batch inserts identities, lock every (kind, value) it may insert, in one order.

    A batch inserts new identities in several statements (new people in
    `customers_precreate`, then new devices, emails and phones in `claims_flush`,
    rarely a single claim in between), each in key order; but two batches can
    still meet in opposite orders across statements (X: new d*, then e*; Y: new
    e*, then d*) and deadlock. Two batches that may insert the same key now
    queue on its lock before either inserts anything. A batch with more than
    MAX_KEY_LOCKS new keys takes the gate exclusively instead of its keys (a
    backfill of new people then runs alone). SQLite runs one writer at a time.
    Returns whether it had to wait for another batch (whose keys the caller then re-reads).
    """
    if not keys or not _pg():
        return False
    # Each lock is tried first and waited for only if taken: CASE evaluates in order, so the
    # row says 1 when this batch queued behind another. (void::text is '', hence the length.)
    wait = "CASE WHEN pg_try_advisory_xact_lock{0}(%s, {1}) THEN 0 ELSE length(pg_advisory_xact_lock{0}(%s, {1})::text) + 1 END"
    with connection.cursor() as cur:
        if len(keys) > MAX_KEY_LOCKS:
            cur.execute(f"SELECT {wait.format('', '0')}", [NEW_KEYS_GATE] * 2)
            return bool(cur.fetchone()[0])
        # One round trip: the gate (the NULL row) first, then the keys in hash order. PostgreSQL
        # evaluates a volatile function of the select list after the ORDER BY's sort (EXPLAIN: a
        # Result above the Sort), so the locks are taken in that order.
        cur.execute(
            f"SELECT sum(waited) FROM (SELECT CASE WHEN k IS NULL THEN {wait.format('_shared', '0')}"
            f" ELSE {wait.format('', 'hashtext(k)')} END AS waited"
            " FROM (SELECT NULL::text AS k UNION ALL SELECT jsonb_array_elements_text(%s::jsonb)) AS keys"
            " ORDER BY hashtext(k) NULLS FIRST) AS locked",
            [NEW_KEYS_GATE] * 2 + [NEW_KEY_LOCK] * 2 + [json.dumps([f"{kind}:{value}" for kind, value in keys])],
        )
        return bool(cur.fetchone()[0])


def customers_precreate(imap, events) -> None:
    """Create every brand-new person of a batch at once.

    One INSERT of customers, one INSERT of identities in (kind, value) order
    (ON CONFLICT DO NOTHING), one SELECT to learn who won each identity; profiles
    that won nothing (a concurrent request created the person first) are deleted.
    Events whose ids meet existing profiles (merges, aliases) are left to
    `customer_resolve`.
    """
    plan: dict[tuple[str, str], tuple[str, int]] = {}
    planned: list[tuple] = []

    def owner(key):
        if key in plan:
            return plan[key]
        if key in imap.ids:
            return ("old", imap.ids[key])
        return None

    deferred: set[tuple[str, str]] = set()  # ids of events left to customer_resolve (they meet old profiles)
    for e in events:
        u = (IdentityKind.USER_ID, e.user_id) if e.user_id else None
        a = (IdentityKind.ANONYMOUS_ID, e.anonymous_id) if e.anonymous_id else None
        if e.type == EventType.ALIAS or (u and u in deferred) or (a and a in deferred):
            deferred.update(k for k in (u, a) if k)
            continue
        ou = owner(u) if u else None
        oa = owner(a) if a else None
        if u and ou is None and oa is None:
            plan[u] = ("new", len(planned))
            if a:
                plan[a] = plan[u]
            planned.append([e.timestamp, e.user_id])
        elif u is None and a and oa is None:
            plan[a] = ("new", len(planned))
            planned.append([e.timestamp, ""])
        elif u and ou is None and oa is not None and oa[0] == "new" and not planned[oa[1]][1]:
            plan[u] = oa  # an anonymous person of this batch identifies: they become known
            planned[oa[1]][1] = e.user_id
        elif (u and ou is None) or (a and oa is None) or (ou and oa and ou != oa):
            deferred.update(k for k in (u, a) if k)
    if not planned:
        return
    customers = Customer.objects.bulk_create([Customer(external_id=ext, first_seen=ts, last_seen=ts) for ts, ext in planned])
    rows = sorted((kind, value, customers[t[1]].pk) for (kind, value), t in plan.items())
    identities_insert(rows)
    owners = identities_find([(k, v) for k, v, _ in rows])
    ours = {c.pk: c for c in customers}
    used = set()
    for k, v, _ in rows:
        cid = owners.get((k, v))
        if cid is not None:
            imap.ids[(k, v)] = cid
            if cid in ours:
                used.add(cid)
                imap.customers[cid] = ours[cid]
    imap.customers_lock({cid for cid in imap.ids.values() if cid not in imap.customers})
    orphans = [pk for pk in ours if pk not in used]
    if orphans:
        # Created a moment ago in this transaction and referenced by nothing (their identities
        # lost the race): a plain DELETE, without the ORM collector's cascade queries per relation.
        # Their rechecks (a database trigger marks new customers) go first.
        with connection.cursor() as cur:
            marks = ", ".join(["%s"] * len(orphans))
            for model in (StageRecheck, SegmentRecheck):
                cur.execute(f"DELETE FROM {model._meta.db_table} WHERE customer_id IN ({marks})", orphans)
            cur.execute(f"DELETE FROM {Customer._meta.db_table} WHERE id IN ({marks})", orphans)
