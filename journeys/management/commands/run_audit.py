"""Run the governance audit now (it also runs daily on the q2 schedule) and print a summary."""

from django.core.management.base import BaseCommand

from journeys.services.governance import audit_run


class Command(BaseCommand):
    help = "Audit live workflows: orphaned paths, stale personalization, step latency/errors, channel errors."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=14, help="look-back window in days (default 14)")

    def handle(self, *args, days, **options):
        report = audit_run(days=days, trigger="command")
        for section, rows in report.findings.items():
            self.stdout.write(f"{section}: {len(rows)}")
            for row in rows[:50]:
                self.stdout.write(f"  {row}")
        self.stdout.write(f"report #{report.pk} saved (admin: ops dashboard)")
