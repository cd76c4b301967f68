"""Data-subject erasure request (see docs/PRIVACY.md for what is deleted and what is kept)."""

import getpass

from django.core.management import BaseCommand, CommandError

from channels_app.management.commands._customer import find_customer
from channels_app.services import customer_erase


class Command(BaseCommand):
    help = "Erase a customer per the privacy policy (docs/PRIVACY.md). Irreversible: needs --yes."

    def add_arguments(self, parser):
        parser.add_argument("customer")
        parser.add_argument("--reason", default="", help="e.g. the request's ticket number")
        parser.add_argument("--yes", action="store_true", help="confirm the erasure")

    def handle(self, *args, customer, reason, yes, **options):
        target = find_customer(customer, note=self.stderr.write)
        if not yes:
            raise CommandError(f"this erases customer {target} irreversibly; add --yes to confirm")
        record = customer_erase(customer=target, actor=f"command:{getpass.getuser()}", reason=reason)
        self.stdout.write(f"erased customer #{record.customer_id_erased}: {record.counts}")
