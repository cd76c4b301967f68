from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from journeys.services.sources import source_create


class Command(BaseCommand):
    help = "Create an event source; prints its write key (shown only once) on the last line."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--description", default="")
        parser.add_argument("--rate-limit", type=int, default=None, help="requests per rate window")

    def handle(self, *args, name: str, description: str, rate_limit: int | None, **options):
        try:
            source, key = source_create(name=name, description=description, rate_limit=rate_limit)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        self.stderr.write(f"Created source {source.name!r} (id {source.pk}). Store this key now; it is not shown again:")
        self.stdout.write(key)
