"""The quarantine purge used to leave every purged entry's history rows (each with the whole
payload the client sent) and add one more: delete the history rows of entries that are gone."""

from django.db import migrations


def purge_orphan_history(apps, schema_editor):
    Entry = apps.get_model("journeys", "QuarantinedEvent")
    History = apps.get_model("journeys", "HistoricalQuarantinedEvent")
    History.objects.exclude(id__in=Entry.objects.values("pk")).delete()


class Migration(migrations.Migration):
    dependencies = [("journeys", "0029_job_chunks")]

    operations = [migrations.RunPython(purge_orphan_history, migrations.RunPython.noop, elidable=True)]
