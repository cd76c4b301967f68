"""Does the event table stay flat as it grows? Insert, outbox and history costs, small vs. large.

On a private PostgreSQL (bench/common.py), migrated as in production (journeys_event
partitioned by id range, dedup keys in journeys_eventkey), it measures with the product's own
code and queries:

- insert: `events_insert` of fresh events (batches of 500, each its own transaction), us/event;
- outbox: the sweeper's query (pending events older than 30 s, oldest first, 2,000), ms;
- history: `events_in_last`'s count for one customer (a name over 30 days), ms;
- dedup: the ingest pre-check of 500 messageIds against the keys, ms;

first on a small table (the baseline, same run), then after filling it with `--rows` events
(default 5,000,000; 20,000,000 for the full measurement, ~40 min to fill on 2 loaded cores)
by generate_series: a year of processed events of 200,000 customers,
the last 30 days' keys in journeys_eventkey. Prints one JSON line with the ratios large/small
(1.0 = flat). `--partition-ids` sets the partition size (default 2,000,000, so the fill spans
several partitions as a year would).

    .venv/bin/python bench/event_table.py [--rows 20000000] [--partition-ids 2000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import exit_on_sigterm, log, manage, postgres, report, server_env  # noqa: E402

CUSTOMERS = 200_000


def _django(url: str, partition_ids: int) -> None:
    os.environ.update(server_env(url, EVENT_PARTITION_IDS=str(partition_ids)))
    import django

    django.setup()


def _measure(source_id: int, rounds: int) -> dict:
    from datetime import timedelta

    from django.db import connection, transaction
    from django.utils import timezone

    from journeys.models import Event, EventKey
    from journeys.services.bulk_ingest import events_insert

    now = timezone.now()
    inserts = []
    for _ in range(rounds):
        rows = [{"source_id": source_id, "message_id": f"b-{uuid.uuid4()}", "type": "track", "name": "Order Completed",
                 "user_id": f"u{n}", "customer_id": 1 + (n * 7919) % CUSTOMERS, "properties": {"total": n},
                 "timestamp": now, "received_at": now, "status": "processed"} for n in range(500)]
        started = time.perf_counter()
        with transaction.atomic():
            events_insert(rows)
        inserts.append((time.perf_counter() - started) / len(rows) * 1e6)

    def timed(query, runs: int = 15) -> float:
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            query()
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)

    cutoff = now - timedelta(seconds=30)
    outbox = timed(lambda: list(Event.objects.filter(status="pending", received_at__lte=cutoff)
                                .order_by("received_at").values_list("id", flat=True)[:2000]))
    since = now - timedelta(days=30)
    history = timed(lambda: Event.objects.filter(customer_id=4242, name="Order Completed", timestamp__gte=since).count())
    mids = [f"m-{n}" for n in range(500)]
    dedup = timed(lambda: list(EventKey.objects.filter(source_id=source_id, message_id__in=mids)
                               .values_list("message_id", flat=True)))
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'journeys_event'::regclass")
        partitions = cur.fetchone()[0]
    return {"insert_us": statistics.median(inserts), "outbox_ms": outbox, "history_ms": history, "dedup_ms": dedup,
            "partitions": partitions}


def _fill(rows: int, source_id: int) -> None:
    from django.db import connection

    from journeys.services.event_storage import events_partitions_ensure

    step = 1_000_000
    with connection.cursor() as cur:
        cur.execute("SELECT coalesce(max(id), 0) FROM journeys_customer")
        if cur.fetchone()[0] < CUSTOMERS:
            cur.execute("INSERT INTO journeys_customer (external_id, email, phone, timezone, locale, traits, stage,"
                        " created_at, updated_at) SELECT 'c' || g, '', '', 'UTC', '', '{}'::jsonb, '', now(), now()"
                        f" FROM generate_series(1, {CUSTOMERS}) g")
        for start in range(0, rows, step):
            n = min(step, rows - start)
            events_partitions_ensure()  # as the schedule does while the table grows
            cur.execute(
                "INSERT INTO journeys_event (source_id, message_id, type, name, user_id, anonymous_id, previous_id,"
                " group_id, category, channel, version, customer_id, properties, traits, context, integrations,"
                " metadata, other, violations, changes, timestamp, received_at, status, attempts, processed_at, error)"
                " SELECT %s, 'f-' || g, 'track', (ARRAY['Order Completed','Page Viewed','Cart Updated'])[1 + g %% 3],"
                " 'c' || (1 + (g * 7919) %% %s), '', '', '', '', 'server', '', 1 + (g * 7919) %% %s,"
                " jsonb_build_object('total', g %% 500, 'sku', 'sku-' || (g %% 9000)), '{}', '{\"library\": {\"name\": \"analytics-python\"}}',"
                " '{}', '{}', '{}', '[]', '{}', ts, ts, 'processed', 1, ts, ''"
                " FROM generate_series(%s::bigint, %s::bigint) g, LATERAL (SELECT now() - interval '365 days' * (1 - g::float / %s) AS ts) t",
                [source_id, CUSTOMERS, CUSTOMERS, start + 1, start + n, rows],
            )
            log(f"filled {start + n:,} of {rows:,} events")
        cur.execute(
            "INSERT INTO journeys_eventkey (source_id, message_id, received_at, event_id) SELECT source_id, message_id,"
            " received_at, id FROM journeys_event WHERE received_at > now() - interval '30 days' AND message_id LIKE 'f-%%'"
            " ON CONFLICT DO NOTHING")
        events_partitions_ensure()
        cur.execute("ANALYZE journeys_event; ANALYZE journeys_eventkey; ANALYZE journeys_customer")


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="events to fill (20000000 for the full measurement)")
    parser.add_argument("--partition-ids", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=20, help="insert batches of 500 per measurement")
    args = parser.parse_args()
    with postgres() as url:
        env = server_env(url, EVENT_PARTITION_IDS=str(args.partition_ids))
        manage("migrate", "-v0", env=env)
        _django(url, args.partition_ids)
        from tests.factories import make_source

        source, _key = make_source("bench")
        _fill(0, source.pk)
        small = _measure(source.pk, args.rounds)
        log(f"small table: {small}")
        started = time.monotonic()
        _fill(args.rows, source.pk)
        log(f"filled {args.rows:,} rows in {time.monotonic() - started:.0f} s")
        big = _measure(source.pk, args.rounds)
        log(f"{args.rows:,} rows: {big}")
        from django.db import connection

        connection.close()
    report("event_table", insert_ratio=round(big["insert_us"] / small["insert_us"], 3),
           outbox_ratio=round(big["outbox_ms"] / small["outbox_ms"], 3),
           history_ratio=round(big["history_ms"] / small["history_ms"], 3),
           dedup_ratio=round(big["dedup_ms"] / small["dedup_ms"], 3), rows=args.rows,
           small={k: round(v, 3) for k, v in small.items()}, large={k: round(v, 3) for k, v in big.items()})


if __name__ == "__main__":
    main()
