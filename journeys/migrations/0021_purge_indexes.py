"""Indexes for the purges: dedup keys by (source, received_at) instead of received_at alone, and
stream batches by delivery. On PostgreSQL built and dropped CONCURRENTLY (the migration is not
atomic): the dedup-key table holds millions of rows on an install that has run for a while, and
a plain CREATE INDEX would block event ingestion while it is built. A build that was cancelled
leaves an invalid index behind, which is dropped first, so running the migration again builds it.
The model state is the same as Django's RemoveIndex / AddIndex operations give."""

from django.db import migrations, models

OLD_KEY = models.Index(fields=["received_at"], name="event_key_received_idx")
NEW_KEY = models.Index(fields=["source", "received_at"], name="event_key_source_received_idx")
DELIVERED = models.Index(condition=models.Q(("delivered_at__isnull", False)), fields=["delivered_at"],
                         name="streambatch_delivered_idx")


def _drop_invalid(schema_editor, name: str) -> None:
    schema_editor.execute(
        f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        f" WHERE c.relname = '{name}' AND NOT i.indisvalid) THEN EXECUTE 'DROP INDEX {name}'; END IF; END $$")


def _swap(apps, schema_editor, drop: list, add: list) -> None:
    pg = schema_editor.connection.vendor == "postgresql"
    concurrently = {"concurrently": True} if pg else {}
    for model_name, index in drop:
        schema_editor.remove_index(apps.get_model("journeys", model_name), index, **concurrently)
    for model_name, index in add:
        if pg:
            _drop_invalid(schema_editor, index.name)
        schema_editor.add_index(apps.get_model("journeys", model_name), index, **concurrently)


def forwards(apps, schema_editor):
    _swap(apps, schema_editor, drop=[("EventKey", OLD_KEY)], add=[("EventKey", NEW_KEY), ("StreamBatch", DELIVERED)])


def backwards(apps, schema_editor):
    _swap(apps, schema_editor, drop=[("EventKey", NEW_KEY), ("StreamBatch", DELIVERED)], add=[("EventKey", OLD_KEY)])


class Migration(migrations.Migration):
    atomic = False
    dependencies = [
        ('journeys', '0020_run_waiting_event_idx'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forwards, backwards)],
            state_operations=[
                migrations.RemoveIndex(model_name="eventkey", name="event_key_received_idx"),
                migrations.AddIndex(model_name="eventkey", index=NEW_KEY),
                migrations.AddIndex(model_name="streambatch", index=DELIVERED),
            ],
        ),
    ]
