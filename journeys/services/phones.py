"""Bring stored phone numbers to the form `phone_normalize` gives, in bounded steps.

Numbers were once stored as typed ('+1 555 777 0001'); lookups now use the normalised form
('+15557770001'). Migration 0028 runs `phones_normalise` once, and `manage.py phones_normalise`
runs it again after an upgrade: a web process of the previous release that was still serving
while (or after) the migration ran wrote numbers as typed, and nothing else rewrites them.

It is built to run on a live install: on PostgreSQL each step is one set-based statement over
one key range of rows and commits on its own, so no row stays locked for long and ingestion
goes on meanwhile; rows that are already normalised are not touched, so running it again costs a
scan and writes nothing. SQLite (development, tests) takes the same steps in Python.

An identity cannot always take its normalised value: (kind, value) is unique and each identity
points at one customer. Where one customer holds the number in several spellings they become one
identity (the extra spellings are deleted). Where the spellings belong to different customers
(a collision: two profiles for one number, made before numbers were normalised), they are left
as typed, counted and listed (`--collisions`) so that someone can merge the profiles; lookups
still find such an identity by its exact spelling (`phone_lookup_values`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.db import IntegrityError, OperationalError, connection, models, transaction

from journeys.services.identity import PHONE_AFFIX, PHONE_SEPARATOR, PHONE_TRUNK, PHONE_UNNORMALISED, phone_normalize

PHONE = "phone"
CHUNK = 5000  # rows (ids) per statement: each one holds its row locks well under a second
LAST_ID = 2**63  # past any id
PLAN = "phones_normalise_plan"


@dataclass
class PhonesReport:
    customers: int = 0  # profile numbers rewritten
    identities: int = 0  # phone identities rewritten
    collapsed: int = 0  # extra spellings of one customer's number, deleted
    # (normalised number, identity id, value, customer id) of each identity of a number that
    # belongs to more than one customer, left as it is
    collisions: list[tuple[str, int, str, int]] = field(default_factory=list)

    @property
    def collided_numbers(self) -> int:
        return len({number for number, *_ in self.collisions})

    def summary(self) -> str:
        text = (f"{self.customers} profile numbers and {self.identities} phone identities normalised, "
                f"{self.collapsed} duplicate spellings of one customer's number removed")
        if self.collisions:
            text += (f"; {self.collided_numbers} numbers belong to more than one customer in different spellings "
                     f"({len(self.collisions)} identities, left as they are: `manage.py phones_normalise "
                     f"--collisions` lists them to merge)")
        return text


def phones_normalise(*, customer_model: type[models.Model] | None = None,
                     identity_model: type[models.Model] | None = None, chunk: int = CHUNK) -> PhonesReport:
    """Normalise the profiles' numbers, then the phone identities (see the module's docstring).
    Idempotent; each chunk is its own transaction unless the caller holds one open. Migrations
    pass their historical models."""
    if customer_model is None or identity_model is None:
        from journeys.models import Customer, Identity

        customer_model, identity_model = customer_model or Customer, identity_model or Identity
    report = PhonesReport()
    step = _Postgres(customer_model, identity_model, chunk) if connection.vendor == "postgresql" else \
        _Python(customer_model, identity_model, chunk)
    report.customers = step.customers()
    report.identities, report.collapsed, report.collisions = step.identities()
    return report


class _Postgres:
    """Set-based: regexp_replace with the very patterns `phone_normalize` uses."""

    def __init__(self, customer_model, identity_model, chunk: int):
        self.customers_table = connection.ops.quote_name(customer_model._meta.db_table)
        self.identities_table = connection.ops.quote_name(identity_model._meta.db_table)
        self.chunk = chunk

    @staticmethod
    def norm(column: str) -> str:
        return f"regexp_replace(regexp_replace(regexp_replace({column}, %s, '', 'g'), %s, '\\1'), %s, '', 'g')"

    def _ranges(self, cur, table: str):
        cur.execute(f"SELECT min(id), max(id) FROM {table}")
        low, high = cur.fetchone()
        if low is None:
            return
        for start in range(low, high + 1, self.chunk):
            yield start, start + self.chunk

    @staticmethod
    def _commit(cur, sql: str, params: list) -> int:
        """One statement in its own transaction (a savepoint inside the caller's); run again when
        it lost a race with a web process: a deadlock, or a number stored at that moment."""
        for attempt in (1, 2, 3):
            try:
                with transaction.atomic():
                    cur.execute(sql, params)
                    return cur.rowcount
            except (IntegrityError, OperationalError) as exc:
                raced = isinstance(exc, IntegrityError) or getattr(exc.__cause__, "sqlstate", "") == "40P01"
                if attempt == 3 or not raced:
                    raise
        return 0

    def customers(self) -> int:
        changed = 0
        with connection.cursor() as cur:
            for low, high in self._ranges(cur, self.customers_table):
                changed += self._commit(cur, f"UPDATE {self.customers_table} SET phone = {self.norm('phone')}"
                                             f" WHERE id >= %s AND id < %s AND phone ~ %s",
                                        [PHONE_AFFIX, PHONE_TRUNK, PHONE_SEPARATOR, low, high, PHONE_UNNORMALISED])
        return changed

    def identities(self) -> tuple[int, int, list]:
        """A plan first (a table of every phone identity still typed, its number, who holds that
        number already, and its step: `move` to the number, `drop` as a customer's extra spelling,
        or `collide`), then the updates and deletes it calls for, chunk by chunk. Each statement
        checks again that the row is as planned and that the number is where it is expected, so
        a row written meanwhile is left for the next run, never overwritten. The plan is an
        unlogged table, not a temporary one: behind PgBouncer in transaction mode the statements
        of one run may reach different server sessions. One run at a time."""
        table = self.identities_table
        with connection.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {PLAN}")
            cur.execute(
                f"CREATE UNLOGGED TABLE {PLAN} AS"
                f" WITH typed AS (SELECT id, customer_id, value, {self.norm('value')} AS norm FROM {table}"
                f"  WHERE kind = %s AND value ~ %s),"
                f" numbers AS (SELECT norm, count(DISTINCT customer_id) AS customers, min(customer_id) AS customer_id,"
                f"  min(id) AS first_id FROM typed WHERE norm <> '' GROUP BY norm)"
                f" SELECT t.id, t.customer_id, t.value, t.norm, h.id AS holder_id, h.customer_id AS holder_customer_id,"
                f"  CASE WHEN n.customers > 1 OR h.customer_id <> n.customer_id THEN 'collide'"
                f"  WHEN h.id IS NULL AND t.id = n.first_id THEN 'move' ELSE 'drop' END AS step"
                f" FROM typed t JOIN numbers n ON n.norm = t.norm"
                f" LEFT JOIN {table} h ON h.kind = %s AND h.value = t.norm",
                [PHONE_AFFIX, PHONE_TRUNK, PHONE_SEPARATOR, PHONE, PHONE_UNNORMALISED, PHONE])
            cur.execute(f"CREATE INDEX ON {PLAN} (step, id)")
            cur.execute(f"ANALYZE {PLAN}")
            planned = "i.id = p.id AND i.value = p.value AND i.customer_id = p.customer_id AND p.step = %s" \
                      " AND p.id >= %s AND p.id < %s"
            # the first spelling becomes the number, unless someone stored the number meanwhile
            moved = self._chunked(cur, "move", f"UPDATE {table} i SET value = p.norm FROM {PLAN} p WHERE {planned}"
                                               f" AND NOT EXISTS (SELECT 1 FROM {table} x WHERE x.kind = %s"
                                               f" AND x.value = p.norm)")
            # then the other spellings go, where the customer holds the number now
            collapsed = self._chunked(cur, "drop", f"DELETE FROM {table} i USING {PLAN} p WHERE {planned}"
                                                   f" AND EXISTS (SELECT 1 FROM {table} x WHERE x.kind = %s"
                                                   f" AND x.value = p.norm AND x.customer_id = p.customer_id)")
            cur.execute(f"SELECT norm, id, value, customer_id FROM {PLAN} WHERE step = 'collide' UNION"
                        f" SELECT norm, holder_id, norm, holder_customer_id FROM {PLAN} WHERE step = 'collide'"
                        " AND holder_id IS NOT NULL ORDER BY 1, 2")
            collisions = [tuple(row) for row in cur.fetchall()]
            cur.execute(f"DROP TABLE {PLAN}")
        return moved, collapsed, collisions

    def _chunked(self, cur, step: str, sql: str) -> int:
        """`sql` over the plan's rows of `step`, `chunk` of them (a range of ids) per transaction."""
        done = 0
        cur.execute(f"SELECT min(id) FROM {PLAN} WHERE step = %s", [step])
        start = cur.fetchone()[0]
        while start is not None:
            cur.execute(f"SELECT id FROM {PLAN} WHERE step = %s AND id >= %s ORDER BY id OFFSET %s LIMIT 1",
                        [step, start, self.chunk])
            end = row[0] if (row := cur.fetchone()) else None
            done += self._commit(cur, sql, [step, start, end if end is not None else LAST_ID, PHONE])
            start = end
        return done


class _Python:
    """SQLite: the same steps, page by page in Python."""

    def __init__(self, customer_model, identity_model, chunk: int):
        self.Customer, self.Identity, self.chunk = customer_model, identity_model, chunk

    def _pages(self, queryset, *fields):
        last = 0
        while page := list(queryset.filter(pk__gt=last).order_by("pk").values_list("pk", *fields)[:self.chunk]):
            yield page
            last = page[-1][0]

    def customers(self) -> int:
        changed = 0
        for page in self._pages(self.Customer.objects.filter(phone__regex=PHONE_UNNORMALISED), "phone"):
            with transaction.atomic():
                for pk, phone in page:
                    changed += self.Customer.objects.filter(pk=pk, phone=phone).update(phone=phone_normalize(phone))
        return changed

    def identities(self) -> tuple[int, int, list]:
        Identity = self.Identity
        typed = Identity.objects.filter(kind=PHONE, value__regex=PHONE_UNNORMALISED)
        spellings: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
        for page in self._pages(typed, "value", "customer_id"):
            for pk, value, customer_id in page:
                if norm := phone_normalize(value):
                    spellings[norm].append((pk, value, customer_id))
        holders: dict[str, tuple[int, int]] = {}
        numbers = list(spellings)
        for i in range(0, len(numbers), 500):
            for pk, value, customer_id in Identity.objects.filter(kind=PHONE, value__in=numbers[i:i + 500]) \
                    .values_list("pk", "value", "customer_id"):
                holders[value] = (pk, customer_id)
        moved = collapsed = 0
        collisions = []
        for norm, rows in spellings.items():
            customers = {customer_id for _, _, customer_id in rows} | ({holders[norm][1]} if norm in holders else set())
            if len(customers) > 1:
                listed = rows + ([(holders[norm][0], norm, holders[norm][1])] if norm in holders else [])
                collisions += [(norm, pk, value, customer_id) for pk, value, customer_id in sorted(listed)]
                continue
            rows.sort()
            (customer_id,) = customers
            with transaction.atomic():
                if norm not in holders:
                    pk, value, _ = rows.pop(0)
                    try:
                        with transaction.atomic():
                            moved += Identity.objects.filter(pk=pk, value=value, customer_id=customer_id) \
                                .update(value=norm)
                    except IntegrityError:  # stored meanwhile by a web process: the next run sees it
                        continue
                # the other spellings go, where the customer holds the number now
                if Identity.objects.filter(kind=PHONE, value=norm, customer_id=customer_id).exists():
                    collapsed += Identity.objects.filter(pk__in=[pk for pk, _, _ in rows], customer_id=customer_id,
                                                         value__in=[value for _, value, _ in rows]).delete()[0]
        collisions.sort()
        return moved, collapsed, collisions
