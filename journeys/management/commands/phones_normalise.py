"""Normalise stored phone numbers (what migration 0028 does), e.g. after a rolling upgrade."""

from django.core.management.base import BaseCommand, CommandError

from journeys.services.phones import CHUNK, phones_normalise


class Command(BaseCommand):
    help = ("Store every profile number and phone identity still written as typed ('+1 555 777 0001') in the "
            "form lookups use ('+15557770001'), as migration 0028 does; safe to run on a live install and "
            "again (each step commits on its own; normalised rows are not touched). Run it once every web "
            "and worker process runs the new code: a process of the previous release writes numbers as typed. "
            "Numbers that belong to more than one customer in different spellings are left as they are and "
            "counted; --collisions lists them.")

    def add_arguments(self, parser):
        parser.add_argument("--collisions", action="store_true",
                            help="list each number held by more than one customer: number, identity id, "
                                 "spelling, customer id (merge the profiles, then run this again)")
        parser.add_argument("--chunk", type=int, default=CHUNK, help=f"ids per statement (default {CHUNK})")

    def handle(self, *args, collisions, chunk, **options):
        if chunk < 1:
            raise CommandError(f"--chunk: must be 1 or more, not {chunk}")
        report = phones_normalise(chunk=chunk)
        if collisions:
            for number, identity_id, value, customer_id in report.collisions:
                self.stdout.write(f"{number}\tidentity {identity_id}\t{value!r}\tcustomer {customer_id}")
        self.stdout.write(report.summary())
