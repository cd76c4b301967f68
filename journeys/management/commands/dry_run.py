import json

from django.core.management.base import BaseCommand, CommandError

from journeys.errors import JourneyError
from journeys.models import Customer, Identity, WorkflowVersion
from journeys.services.event_parsing import json_read_storable
from journeys.services.dry_run import version_dry_run


class Command(BaseCommand):
    help = "Show what a workflow version would do for a customer and an event, without side effects."

    def add_arguments(self, parser):
        parser.add_argument("version_id", type=int)
        parser.add_argument("--customer", required=True, help="user id, email, or #pk")
        parser.add_argument("--event", default="{}", help='JSON, e.g. {"event": "Checkout Started", "properties": {}}')
        parser.add_argument("--later-event", action="append", default=[], help="event assumed to arrive while waiting")

    def handle(self, *args, version_id, customer, event, later_event, **options):
        version = WorkflowVersion.objects.filter(pk=version_id).first()
        if version is None:
            raise CommandError(f"version {version_id} does not exist")
        if customer.startswith("#"):
            person = Customer.objects.filter(pk=customer[1:]).first()
        else:
            identity = Identity.objects.filter(value__in=[customer, customer.lower()]).select_related("customer").first()
            person = identity.customer if identity else None
        if person is None:
            raise CommandError(f"no customer {customer!r}")
        try:
            payload = json_read_storable(event, field="--event")
        except JourneyError as exc:
            raise CommandError(str(exc)) from None
        report = version_dry_run(version=version, customer=person, event=payload, later_events=later_event)
        self.stdout.write(json.dumps(report.as_dict(), indent=2, default=str))
