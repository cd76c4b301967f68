"""Messages sent outside any run by age (few rows: a partial index), for the history retention;
and on PostgreSQL a BRIN index on deliveries by `created_at`, so the ops dashboard's messages of
the last 24 hours read the last day's block ranges, not every message ever sent (the soak
measured the dashboard growing with the table). `created_at` grows with insertion order, which
is what BRIN summarises: a few pages, next to nothing added to each insert of this hot table
(which keeps its btree indexes few on purpose). Built CONCURRENTLY, as journeys 0022 builds its
own: an install with a large history keeps running. Other databases do without."""

from django.db import migrations, models

NAME, TABLE, COLUMN = "delivery_created_brin", "channels_app_delivery", "created_at"


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # an invalid index left by a cancelled build would be kept by IF NOT EXISTS: drop it first
    schema_editor.execute(
        f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        f" WHERE c.relname = '{NAME}' AND NOT i.indisvalid) THEN EXECUTE 'DROP INDEX {NAME}'; END IF; END $$")
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
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(condition=models.Q(run_id__isnull=True), fields=["created_at"],
                               name="delivery_standalone_idx"),
        ),
    ]
