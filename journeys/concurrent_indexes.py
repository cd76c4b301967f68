"""Index changes on large, busy tables in migrations (journeys 0021's pattern, shared).

On PostgreSQL an index is built and dropped CONCURRENTLY, so the table keeps taking writes (and
reads, for a drop) while it happens; the migration using this must be `atomic = False`. A build
that was cancelled (a statement timeout on a large table) leaves an invalid index behind, which
is dropped first, so running the migration again builds it. Other databases change it plainly.
The migration declares the model state with `state_operations` (AddIndex, RemoveIndex, AlterField)
inside SeparateDatabaseAndState, so the state is the same as Django's own operations give."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from django.db import migrations, models

# (model name, index) pairs
Indexes = Sequence[tuple[str, models.Index]]


def invalid_index_drop(schema_editor, name: str) -> None:
    schema_editor.execute(
        f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        f" WHERE c.relname = '{name}' AND NOT i.indisvalid) THEN EXECUTE 'DROP INDEX {name}'; END IF; END $$")


def fk_index(schema_editor, model: type[models.Model], field: str) -> models.Index:
    """The index Django makes for a foreign key (db_index=True), under the name it gives it."""
    column = model._meta.get_field(field).column
    return models.Index(fields=[field], name=schema_editor._create_index_name(model._meta.db_table, [column]))


def indexes_swap(schema_editor, model_of: Callable[[str], type[models.Model]], *, drop: Indexes = (),
                 add: Indexes = ()) -> None:
    """Build the `add` indexes, then drop the `drop` ones (a query never goes without)."""
    pg = schema_editor.connection.vendor == "postgresql"
    concurrently = {"concurrently": True} if pg else {}

    def present(model: type[models.Model]) -> set[str]:
        with schema_editor.connection.cursor() as cursor:
            return set(schema_editor.connection.introspection.get_constraints(cursor, model._meta.db_table))

    for model_name, index in add:
        model = model_of(model_name)
        if pg:
            invalid_index_drop(schema_editor, index.name)
        if index.name not in present(model):  # already built by an earlier, interrupted run
            schema_editor.add_index(model, index, **concurrently)
    for model_name, index in drop:
        model = model_of(model_name)
        if index.name in present(model):
            schema_editor.remove_index(model, index, **concurrently)


def concurrent_index_operation(app_label: str, *, add: Indexes = (), drop: Indexes = (),
                               unindex_fks: Sequence[tuple[str, str]] = (),
                               state_operations: Sequence = ()) -> migrations.SeparateDatabaseAndState:
    """One operation: build `add`, drop `drop` and the plain index of each (model, foreign key) in
    `unindex_fks` (whose field the caller's `state_operations` set to db_index=False); backwards
    undoes it. The AddIndex / RemoveIndex state operations are made here."""

    def model_of(apps):
        return lambda name: apps.get_model(app_label, name)

    def fks(apps, schema_editor) -> list[tuple[str, models.Index]]:
        return [(name, fk_index(schema_editor, apps.get_model(app_label, name), field)) for name, field in unindex_fks]

    def forwards(apps, schema_editor):
        indexes_swap(schema_editor, model_of(apps), add=add, drop=[*drop, *fks(apps, schema_editor)])

    def backwards(apps, schema_editor):
        indexes_swap(schema_editor, model_of(apps), add=[*drop, *fks(apps, schema_editor)], drop=add)

    return migrations.SeparateDatabaseAndState(
        database_operations=[migrations.RunPython(forwards, backwards)],
        state_operations=[
            *(migrations.RemoveIndex(model_name=name.lower(), name=index.name) for name, index in drop),
            *(migrations.AddIndex(model_name=name.lower(), index=index) for name, index in add),
            *state_operations,
        ],
    )
