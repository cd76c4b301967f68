"""PostgreSQL: BRIN indexes on the moments the daily audit reads a window of (step executions
by `started_at`, runs by `created_at`), so the audit reads the last weeks, not every row ever
written. Both columns grow with insertion order, which is what BRIN summarises: a few pages for
a table of hundreds of millions of rows, and next to nothing added to each insert (these are
the two hottest insert tables). `autosummarize`: a block range is summarised as soon as it
is full (autovacuum does the work), not at the next vacuum of the table; until then the range
is read whole. Built CONCURRENTLY (the migration is not atomic): an install
with a large history keeps running while they are built. Other databases do without."""

from django.db import migrations

INDEXES = [
    ("step_execution_started_brin", "journeys_stepexecution", "started_at"),
    ("run_created_brin", "journeys_journeyrun", "created_at"),
]


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, table, column in INDEXES:
        # A build that was cancelled (a timeout on a large table) leaves an invalid index behind,
        # which IF NOT EXISTS would keep: drop it, so that running the migration again builds it.
        schema_editor.execute(
            f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            f" WHERE c.relname = '{name}' AND NOT i.indisvalid) THEN EXECUTE 'DROP INDEX {name}'; END IF; END $$")
        schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} USING brin ({column})"
                              " WITH (autosummarize = on)")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, _, _ in INDEXES:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("journeys", "0021_purge_indexes")]
    operations = [migrations.RunPython(create, drop)]
