from django.core.management.base import BaseCommand

from config.demo import demo_load


class Command(BaseCommand):
    help = "Create the demo admin user, a demo source, customers and workflows (idempotent)."

    def handle(self, *args, **options):
        report = demo_load()
        for line in report:
            self.stdout.write(line)
