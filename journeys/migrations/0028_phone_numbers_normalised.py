"""Phone numbers were stored as typed ('+1 555 777 0001'), so a carrier's STOP from '+15557770001'
found nobody and one number written two ways made two profiles. They are now stored without
spaces, dashes, dots, parentheses and a trunk '(0)' after the country code
(journeys.services.identity.phone_normalize): bring the existing profile numbers and phone
identities to that form, with the code `manage.py phones_normalise` runs
(journeys.services.phones.phones_normalise).

Not atomic: on PostgreSQL each step is one UPDATE or DELETE over a range of 5,000 ids that commits
on its own, so ingestion goes on while it runs (one transaction over every customer blocked it for
minutes on a large install). It can be stopped and run again; rows already normalised are not
touched. A web process of the previous release that serves meanwhile writes numbers as typed:
run `manage.py phones_normalise` once every process runs the new code (docs/UPGRADING.md).

One customer's several spellings of a number become one identity. Spellings that belong to
different customers (two profiles for one number) are left as typed and counted; lookups still
find them by their exact spelling, and `manage.py phones_normalise --collisions` lists them to merge.
Backwards: nothing to undo (the typed forms are not kept)."""

import sys

from django.db import migrations


def normalise(apps, schema_editor):
    from journeys.services.phones import phones_normalise

    report = phones_normalise(customer_model=apps.get_model("journeys", "Customer"),
                              identity_model=apps.get_model("journeys", "Identity"))
    if report.customers or report.identities or report.collapsed or report.collisions:
        sys.stdout.write(f"\n  phone numbers: {report.summary()}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("journeys", "0027_ops_read_only_task_queue"),
    ]

    operations = [migrations.RunPython(normalise, migrations.RunPython.noop)]
