from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from journeys.services.sources import source_create


class Command(BaseCommand):
    help = "Create an event source; prints its write key (shown only once) on the last line."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--description", default="")
        parser.add_argument("--rate-limit", type=int, default=None, help="requests per rate window")
        parser.add_argument("--strict", action="store_true",
                            help="all or nothing: a batch with one bad event is refused whole (400), nothing quarantined")
        parser.add_argument("--retention-days", type=int, default=None,
                            help="delete this source's events after so many days (default: keep them)")
        parser.add_argument("--allow-known-merges", action="store_true",
                            help="let alias calls merge two known users (off: refused and recorded)")

    def handle(self, *args, name: str, description: str, rate_limit: int | None, strict: bool,
               retention_days: int | None, allow_known_merges: bool, **options):
        try:
            source, key = source_create(name=name, description=description, rate_limit=rate_limit, strict=strict,
                                        retention_days=retention_days, allow_known_merges=allow_known_merges)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        self.stderr.write(f"Created source {source.name!r} (id {source.pk}). Store this key now; it is not shown again:")
        self.stdout.write(key)
