"""Replay quarantined events in bulk (the admin's Replay action takes a few thousand at a time)."""

import getpass
from datetime import datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from journeys.choices import QuarantineReason, QuarantineStatus
from journeys.models import QuarantinedEvent, Source
from journeys.services.quarantine import ReplayResult, quarantine_replay

CHUNK = 500  # entries per call: each is still replayed in its own transaction


def _moment(option: str, value: str | None) -> datetime | None:
    """A date (its midnight) or a date and time; without an offset, in the server's time zone."""
    if value is None:
        return None
    try:
        moment = parse_datetime(value)
        if moment is None and (day := parse_date(value)) is not None:
            moment = datetime.combine(day, time.min)
    except ValueError:  # well formed but no such day (February 31st)
        moment = None
    if moment is None:
        raise CommandError(f"--{option}: not a date or date and time (YYYY-MM-DD or YYYY-MM-DDTHH:MM): {value!r}")
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment)


class Command(BaseCommand):
    help = ("Replay the quarantined events that match the filters through the API's ingestion, as the admin's "
            "Replay action does, oldest first. Those still refused stay quarantined with why; the end says how many.")

    def add_arguments(self, parser):
        parser.add_argument("--reason", required=True, help="why they are replayed (recorded on each entry)")
        parser.add_argument("--source", help="only this source's (its name)")
        parser.add_argument("--code", choices=QuarantineReason.values, help="only those refused for this reason")
        parser.add_argument("--received-after", help="only those received from this date (YYYY-MM-DD[THH:MM])")
        parser.add_argument("--received-before", help="only those received before this date")
        parser.add_argument("--limit", type=int, help="at most this many")
        parser.add_argument("--dry-run", action="store_true", help="say how many match, replay nothing")

    def handle(self, *args, reason, source, code, received_after, received_before, limit, dry_run, **options):
        if not reason.strip():
            raise CommandError("--reason: say why these events are replayed (it is recorded)")
        if limit is not None and limit < 1:
            raise CommandError(f"--limit: must be 1 or more, not {limit}")
        entries = QuarantinedEvent.objects.filter(status=QuarantineStatus.QUARANTINED).order_by("pk")
        if source is not None:
            found = Source.objects.filter(name=source).first()
            if found is None:
                raise CommandError(f"--source: no source named {source!r}")
            entries = entries.filter(source=found)
        if code:
            entries = entries.filter(code=code)
        if (after := _moment("received-after", received_after)) is not None:
            entries = entries.filter(received_at__gte=after)
        if (before := _moment("received-before", received_before)) is not None:
            entries = entries.filter(received_at__lt=before)
        ids = list(entries.values_list("pk", flat=True)[:limit])
        if dry_run:
            self.stdout.write(f"{len(ids):,} quarantined event(s) match; nothing replayed (--dry-run).")
            return
        total = ReplayResult()
        reason = f"{reason.strip()} (manage.py quarantine_replay, {getpass.getuser()})"
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            result = quarantine_replay(entries=QuarantinedEvent.objects.filter(pk__in=chunk).only("pk"), reason=reason)
            total.replayed += result.replayed
            total.still_bad += result.still_bad
            total.skipped += result.skipped
            total.history += result.history
            self.stderr.write(f"{start + len(chunk):,} of {len(ids):,} done")
        self.stdout.write(total.summary())
