"""Phone-number normalisation of a live install (migration 0028, `manage.py phones_normalise`):
its time against the same rewrite as two plain UPDATE statements (measured in the same run and
rolled back), and how long an ingest-like transaction waits meanwhile (a writer updating
random customers, inserting one with identities, every 20 ms, as the previous release's web does).

    .venv/bin/python bench/phones_normalise.py [--customers 300000]

PostgreSQL only (DATABASE_URL names a server: a scratch database is made beside it and dropped;
else a private one is started). Data as an install of the previous release holds it: numbers
written six ways, 2,000 profiles sharing a number with another one in another spelling, about
3.6 identities per customer. Last stdout line:
{"bench": "phones_normalise", "seconds": ..., "baseline_seconds": ..., "ratio": ..., "writer_max_wait_s": ...}
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import django_in_process, exit_on_sigterm, log, postgres, report  # noqa: E402

PHONE = """CASE i % 6
    WHEN 0 THEN '+1 555 ' || substr(lpad(i::text, 7, '0'), 1, 3) || ' ' || substr(lpad(i::text, 7, '0'), 4, 4)
    WHEN 1 THEN '(555) ' || substr(lpad(i::text, 7, '0'), 1, 3) || '-' || substr(lpad(i::text, 7, '0'), 4, 4)
    WHEN 2 THEN '+1555' || lpad(i::text, 7, '0')
    WHEN 3 THEN '555.' || substr(lpad(i::text, 7, '0'), 1, 3) || '.' || substr(lpad(i::text, 7, '0'), 4, 4)
    WHEN 4 THEN '+44 (0)20 7946 ' || lpad((i % 10000)::text, 4, '0') || '-' || i
    ELSE '' END"""
# another profile's number in another spelling, for 2,000 of them
TWIN = """CASE k % 3
    WHEN 0 THEN '+1555' || lpad((6 * k)::text, 7, '0')
    WHEN 1 THEN '(555)' || substr(lpad((6 * k + 1)::text, 7, '0'), 1, 3) || ' ' || substr(lpad((6 * k + 1)::text, 7, '0'), 4, 4)
    ELSE '555-' || substr(lpad((6 * k + 3)::text, 7, '0'), 1, 3) || '-' || substr(lpad((6 * k + 3)::text, 7, '0'), 4, 4) END"""
CUSTOMER = ("INSERT INTO journeys_customer (id, created_at, updated_at, external_id, email, phone, timezone, locale,"
            " traits, first_seen, last_seen, stage) SELECT {id}, now(), now(), {name}, {name} || '@example.com',"
            " {phone}, 'UTC', 'en', '{{}}', now(), now(), '' FROM generate_series(1, {count}) {var}")
SEPARATOR = r"'[-\s.()]'"


def load(conn: psycopg.Connection, customers: int) -> None:
    conn.execute(CUSTOMER.format(id="i", name="'u' || i", phone=PHONE, count=customers, var="i"))
    for kind, value, where in (("user_id", "external_id", ""), ("email", "email", ""),
                               ("phone", "phone", " AND phone <> ''"), ("anonymous_id", "'anon-' || id", " AND id % 4 <> 0")):
        conn.execute(f"INSERT INTO journeys_identity (kind, value, created_at, customer_id) SELECT '{kind}', {value},"
                     f" now(), id FROM journeys_customer WHERE true{where}")
    conn.execute("SELECT setval(pg_get_serial_sequence('journeys_customer', 'id'), %s)", [customers + 10_000])


def add_twins(conn: psycopg.Connection, customers: int) -> None:
    first = customers + 1
    conn.execute(CUSTOMER.format(id=f"{first} + k", name="'twin' || k", phone=TWIN, count=2000, var="k"))
    conn.execute("INSERT INTO journeys_identity (kind, value, created_at, customer_id) SELECT 'phone', phone, now(), id"
                 " FROM journeys_customer WHERE id >= %s", [first])
    conn.execute("SELECT setval(pg_get_serial_sequence('journeys_customer', 'id'), %s)", [customers + 10_000])


def baseline(conn: psycopg.Connection) -> float:
    """The same rewrite as two plain statements (no collisions in the data yet), rolled back."""
    start = time.perf_counter()
    with conn.transaction(force_rollback=True):
        conn.execute(f"UPDATE journeys_customer SET phone = regexp_replace(phone, {SEPARATOR}, '', 'g')"
                     f" WHERE phone ~ {SEPARATOR}")
        conn.execute(f"UPDATE journeys_identity SET value = regexp_replace(value, {SEPARATOR}, '', 'g')"
                     f" WHERE kind = 'phone' AND value ~ {SEPARATOR}")
    return time.perf_counter() - start


def writer(url: str, customers: int, stop: threading.Event, waits: list[float]) -> None:
    rng = random.Random(1)
    with psycopg.connect(url) as conn:
        n = 0
        while not stop.is_set():
            ids = rng.sample(range(1, customers + 1), 10)
            start = time.perf_counter()
            with conn.transaction():
                conn.execute("UPDATE journeys_customer SET last_seen = now(), traits = traits || '{\"seen\": 1}'"
                             " WHERE id = ANY(%s)", [ids[:8]])
                for i in ids[8:]:  # an identify through the previous release: the number as typed
                    conn.execute("UPDATE journeys_customer SET phone = %s WHERE id = %s", [f"+1 555 {i:07d}", i])
                cid = conn.execute("INSERT INTO journeys_customer (created_at, updated_at, external_id, email, phone,"
                                   " timezone, locale, traits, first_seen, last_seen, stage) VALUES (now(), now(), %s,"
                                   " '', '', 'UTC', 'en', '{}', now(), now(), '') RETURNING id",
                                   [f"w{n}"]).fetchone()[0]
                conn.execute("INSERT INTO journeys_identity (kind, value, created_at, customer_id) VALUES"
                             " ('user_id', %s, now(), %s), ('phone', %s, now(), %s)",
                             [f"w{n}", cid, f"(555) 9{n:06d}", cid])
            waits.append(time.perf_counter() - start)
            n += 1
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=300_000)
    args = parser.parse_args()
    exit_on_sigterm()
    with postgres() as url:
        django_in_process(url)
        from journeys.services.phones import phones_normalise

        with psycopg.connect(url, autocommit=True) as conn:
            log(f"loading {args.customers} customers and their identities")
            load(conn, args.customers)
            conn.execute("VACUUM ANALYZE journeys_customer, journeys_identity")
            log("baseline: two plain UPDATEs, rolled back")
            base = baseline(conn)
            add_twins(conn, args.customers)
            conn.execute("VACUUM ANALYZE journeys_customer, journeys_identity")
            identities = conn.execute("SELECT count(*) FROM journeys_identity").fetchone()[0]
        stop, waits = threading.Event(), []
        thread = threading.Thread(target=writer, args=(url, args.customers, stop, waits))
        thread.start()
        time.sleep(1)
        log("phones_normalise, with a writer beside it")
        start = time.perf_counter()
        result = phones_normalise()
        seconds = time.perf_counter() - start
        time.sleep(1)
        stop.set()
        thread.join()
        log(result.summary())
        report("phones_normalise", customers=args.customers + 2000, identities=identities,
               seconds=round(seconds, 2), baseline_seconds=round(base, 2), ratio=round(seconds / base, 2),
               writer_transactions=len(waits), writer_max_wait_s=round(max(waits), 3),
               collided_numbers=result.collided_numbers)


if __name__ == "__main__":
    main()
