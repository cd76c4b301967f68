from django.db import migrations, models
from django.utils import timezone


def mark_tombstones(apps, schema_editor):
    """Profiles erased before the field existed: `customer_erase` renamed them `erased-<id>`."""
    Customer = apps.get_model("journeys", "Customer")
    now = timezone.now()
    rows = Customer.objects.filter(external_id__startswith="erased-").values_list("pk", "external_id")
    ids = [pk for pk, external_id in rows.iterator() if external_id == f"erased-{pk}"]
    for start in range(0, len(ids), 1000):
        Customer.objects.filter(pk__in=ids[start:start + 1000]).update(erased_at=now)


class Migration(migrations.Migration):

    dependencies = [
        ("journeys", "0025_segment_rechecks"),
    ]

    operations = [
        migrations.AddField(
            model_name="customer",
            name="erased_at",
            field=models.DateTimeField(blank=True, editable=False,
                                       help_text="erased (right to erasure): a tombstone that takes no new data",
                                       null=True),
        ),
        migrations.RunPython(mark_tombstones, migrations.RunPython.noop),
    ]
