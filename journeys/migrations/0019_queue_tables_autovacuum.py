"""PostgreSQL: vacuum the date-trigger queue (journeys_datetriggerstale) as soon as a few thousand
rows are dead, not at 20% of the table. Every write to a customer's watched trait queues a row and
the tick deletes it; after a bulk import of 900,000 customers the table held 1,000,000 dead rows
until autovacuum came round, and each idle tick's claim walked them (6.1 ms instead of 0.35 ms:
bench/broadcast.py, docs/BENCHMARKS.md)."""

from django.db import migrations

TABLES = ["journeys_datetriggerstale"]


def tune(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(
            f"ALTER TABLE {table} SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,"
            " autovacuum_vacuum_cost_delay = 0)"
        )


def untune(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(
            f"ALTER TABLE {table} RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,"
            " autovacuum_vacuum_cost_delay)"
        )


class Migration(migrations.Migration):
    dependencies = [("journeys", "0018_stream_schedule")]
    operations = [migrations.RunPython(tune, untune)]
