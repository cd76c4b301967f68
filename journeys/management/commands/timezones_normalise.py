"""Set profile zones from stored `timezone` traits the previous release could not read."""

from django.core.management.base import BaseCommand, CommandError

from journeys.services.profile_zones import CHUNK, timezones_normalise


class Command(BaseCommand):
    help = ("Give every profile whose stored timezone trait names a zone in another spelling "
            "('asia/kolkata', 'America/New_York ') that zone ('Asia/Kolkata'), where its zone column does not "
            "hold it already: release 0921fe7 left such profiles on UTC. Safe to run on a live install and again "
            "(each range of ids commits on its own; profiles already on their zone are not written). Traits that "
            "name no zone ('+05:30') are left as they are and counted. Run it once every process runs the new code.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="count what would be set; write nothing")
        parser.add_argument("--spellings", action="store_true",
                            help="list the spellings met, most frequent first: the zone each was set to, and those "
                                 "that name no zone")
        parser.add_argument("--chunk", type=int, default=CHUNK, help=f"customer ids per transaction (default {CHUNK})")

    def handle(self, *args, dry_run, spellings, chunk, **options):
        if chunk < 1:
            raise CommandError(f"--chunk: must be 1 or more, not {chunk}")
        report = timezones_normalise(chunk=chunk, dry_run=dry_run)
        if spellings:
            for line in report.lines():
                self.stdout.write(line)
        self.stdout.write(report.summary())
