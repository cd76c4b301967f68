"""The dispatcher's per-message mark ("the provider took it") moves to `accepted_at`, a column no
index covers, and PostgreSQL leaves 15% of each delivery page free, so the mark can be a HOT update
(a new row version on the same page, no index entry) instead of one entry in each of the table's
indexes for every message; `sent_at` is written with the batch's result."""

from django.db import migrations, models


def fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE channels_app_delivery SET (fillfactor = 85)")


def fillfactor_reset(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE channels_app_delivery RESET (fillfactor)")


class Migration(migrations.Migration):

    dependencies = [
        ('channels_app', '0006_delivery_fewer_indexes'),
    ]

    operations = [
        migrations.AddField(
            model_name='delivery',
            name='accepted_at',
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.RunPython(fillfactor, fillfactor_reset),
    ]
