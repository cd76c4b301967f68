"""Data-subject access request: everything held about a customer, as JSON."""

import json

from django.core.management import BaseCommand

from channels_app.management.commands._customer import find_customer
from channels_app.services import customer_export


class Command(BaseCommand):
    help = "Export everything held about a customer as JSON (user id, email or customer number)."

    def add_arguments(self, parser):
        parser.add_argument("customer")
        parser.add_argument("--output", "-o", help="file to write (default: standard output)")

    def handle(self, *args, customer, output=None, **options):
        data = json.dumps(customer_export(customer=find_customer(customer)), indent=2, ensure_ascii=False)
        if output:
            with open(output, "w", encoding="utf-8") as f:
                f.write(data)
            self.stdout.write(f"written to {output}")
        else:
            self.stdout.write(data)
