"""Messages sent outside any run by age (few rows: a partial index), for the history retention;
and on PostgreSQL a BRIN index on deliveries by `created_at`, so the ops dashboard's messages of
the last 24 hours read the last day's block ranges, not every message ever sent (the soak
measured the dashboard growing with the table). `created_at` grows with insertion order, which
is what BRIN summarises: a few pages, next to nothing added to each insert of this hot table
(which keeps its btree indexes few on purpose). Other databases do without the BRIN index.
Both are built CONCURRENTLY on PostgreSQL (the migration is not atomic; the partial index through
journeys.concurrent_indexes): an install with a large history keeps sending while they are built."""

from django.db import migrations, models

from journeys.concurrent_indexes import invalid_index_drop, concurrent_index_operation

NAME, TABLE, COLUMN = "delivery_created_brin", "channels_app_delivery", "created_at"


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    invalid_index_drop(schema_editor, NAME)  # an invalid index left by a cancelled build would be kept by IF NOT EXISTS
    schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {NAME} ON {TABLE} USING brin ({COLUMN})"
                          " WITH (autosummarize = on)")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}")


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("channels_app", "0009_delivery_reason_undeliverable")]
    operations = [
        migrations.RunPython(create, drop),
        concurrent_index_operation("channels_app", add=[(
            "Delivery", models.Index(condition=models.Q(run_id__isnull=True), fields=["created_at"],
                                     name="delivery_standalone_idx"))]),
    ]
