"""Data-subject access request: everything held about a customer, as JSON."""

from django.core.management import BaseCommand

from channels_app.management.commands._customer import find_customer
from channels_app.services.privacy import customer_export_write


class Command(BaseCommand):
    help = "Export everything held about a customer as JSON (user id, email or customer number)."

    def add_arguments(self, parser):
        parser.add_argument("customer")
        parser.add_argument("--output", "-o", help="file to write (default: standard output)")

    def handle(self, *args, customer, output=None, **options):
        """Written while it is read, a page of rows at a time (a customer with years of events
        would not fit in memory as one document), the same JSON the console's download gives."""
        customer = find_customer(customer, note=self.stderr.write)
        if output:
            with open(output, "w", encoding="utf-8") as f:
                customer_export_write(customer=customer, write=f.write)
            self.stdout.write(f"written to {output}")
        else:
            customer_export_write(customer=customer, write=lambda piece: self.stdout.write(piece, ending=""))
            self.stdout.write("")
