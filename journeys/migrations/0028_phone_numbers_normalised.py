"""Phone numbers were stored as typed ('+1 555 777 0001'), so a carrier's STOP from '+15557770001'
found nobody and one number written two ways made two profiles. They are now stored without
spaces, dashes, dots and parentheses (journeys.services.identity.phone_normalize): bring the
existing profile numbers and phone identities to that form. An identity whose normalised value
another identity already holds (or that two identities would share) is left as it is: each
identity points at exactly one customer, and merging profiles is not a migration's call.
Backwards: nothing to undo (the typed forms are not kept)."""

import re
from collections import defaultdict

from django.db import migrations

SEPARATORS = re.compile(r"[\s\-.()]")  # as phone_normalize, frozen here
HAS_SEPARATOR = r"[-\s.()]"  # the rows to look at, in SQL (SQLite's REGEXP and PostgreSQL's ~ alike)
PAGE = 2000


def _pages(queryset):
    last = 0
    while True:
        page = list(queryset.filter(pk__gt=last).order_by("pk")[:PAGE])
        if not page:
            return
        yield page
        last = page[-1].pk


def normalise(apps, schema_editor):
    Customer = apps.get_model("journeys", "Customer")
    Identity = apps.get_model("journeys", "Identity")
    for page in _pages(Customer.objects.filter(phone__regex=HAS_SEPARATOR).only("pk", "phone")):
        for customer in page:
            customer.phone = SEPARATORS.sub("", customer.phone)
        Customer.objects.bulk_update(page, ["phone"])

    wanted: dict[str, list] = defaultdict(list)
    for page in _pages(Identity.objects.filter(kind="phone", value__regex=HAS_SEPARATOR).only("pk", "value")):
        for identity in page:
            wanted[SEPARATORS.sub("", identity.value)].append(identity)
    values = [value for value in wanted if value]
    taken: set[str] = set()
    for i in range(0, len(values), 500):
        taken |= set(Identity.objects.filter(kind="phone", value__in=values[i:i + 500]).values_list("value", flat=True))
    moved = []
    for value, identities in wanted.items():
        if value and value not in taken and len(identities) == 1:
            identities[0].value = value
            moved.append(identities[0])
    for i in range(0, len(moved), PAGE):
        Identity.objects.bulk_update(moved[i:i + PAGE], ["value"])


class Migration(migrations.Migration):

    dependencies = [
        ("journeys", "0027_ops_read_only_task_queue"),
    ]

    operations = [migrations.RunPython(normalise, migrations.RunPython.noop)]
