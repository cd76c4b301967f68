"""PostgreSQL: journeys_event becomes a table partitioned by id range (see docs/SCALING.md).

Partitioned by id, not by time: the primary key stays the single `id` column Django expects,
foreign keys into events keep working (a partitioned table can be referenced through a key
that contains the partition key), a lookup by id touches one partition, and ids are handed out
in arrival order, so each partition is a slice of time that can be dropped whole. Dedup of
(source, messageId) moved to journeys_eventkey (0010), since a unique index here would have to
include the id. SQLite keeps the plain table.

The rows are copied into the new table: on a large existing table, run this migration in a
maintenance window. Partitions ahead of the id sequence are kept by the scheduled
`events_housekeeping` (journeys.services.event_storage); a DEFAULT partition catches any id
beyond them, so an insert never fails for want of a partition.
"""

from django.conf import settings
from django.db import migrations

TABLE = "journeys_event"


def _fetch(cursor, sql, params=None):
    cursor.execute(sql, params or [])
    return cursor.fetchall()


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    size = int(settings.EVENT_API["PARTITION_IDS"])
    with schema_editor.connection.cursor() as cur:
        if _fetch(cur, "SELECT 1 FROM pg_partitioned_table WHERE partrelid = %s::regclass", [TABLE]):
            return
        # What to re-create: foreign keys into and out of the table, and its secondary indexes.
        inbound = _fetch(cur, "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
                              " WHERE confrelid = %s::regclass AND contype = 'f'", [TABLE])
        outbound = _fetch(cur, "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                               " WHERE conrelid = %s::regclass AND contype = 'f'", [TABLE])
        indexes = _fetch(cur, "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT IN"
                              " (SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)", [TABLE, TABLE])
        last_id = _fetch(cur, f"SELECT coalesce(max(id), 0) FROM {TABLE}")[0][0]
        for table, name, _ in inbound:
            cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        cur.execute(f"ALTER TABLE {TABLE} RENAME TO {TABLE}_unpartitioned")
        cur.execute(f"CREATE TABLE {TABLE} (LIKE {TABLE}_unpartitioned INCLUDING DEFAULTS INCLUDING IDENTITY"
                    " INCLUDING CONSTRAINTS) PARTITION BY RANGE (id)")
        top = (last_id // size + 3) * size  # two empty partitions ahead of the rows there are
        for lo in range(0, top, size):
            low = "MINVALUE" if lo == 0 else str(lo)
            cur.execute(f"CREATE TABLE {TABLE}_p{lo // size} PARTITION OF {TABLE} FOR VALUES FROM ({low}) TO ({lo + size})")
        cur.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {TABLE} DEFAULT")
        cur.execute(f"INSERT INTO {TABLE} OVERRIDING SYSTEM VALUE SELECT * FROM {TABLE}_unpartitioned")
        cur.execute(f"DROP TABLE {TABLE}_unpartitioned")  # frees the names of its key and indexes
        cur.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id)")
        cur.execute(f"SELECT setval(pg_get_serial_sequence('{TABLE}', 'id'), %s, %s)", [max(last_id, 1), last_id > 0])
        for (definition,) in indexes:
            cur.execute(definition.replace(f"ON public.{TABLE}_unpartitioned ", f"ON {TABLE} ")
                        .replace(f"ON {TABLE}_unpartitioned ", f"ON {TABLE} "))
        for name, definition in outbound:
            cur.execute(f'ALTER TABLE {TABLE} ADD CONSTRAINT "{name}" {definition}')
        for table, name, definition in inbound:
            cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')


class Migration(migrations.Migration):
    atomic = True

    dependencies = [
        ("journeys", "0010_event_keys_retention"),
        ("agents", "0001_initial"),  # its cases point at events: their key is re-created here
    ]

    operations = [migrations.RunPython(partition, migrations.RunPython.noop)]
