from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.demo import demo_load


class Command(BaseCommand):
    help = ("Create the demo admin user (admin/admin), role and agent logins whose password is their name, a demo "
            "source, customers and workflows (idempotent). For a local demo: refused with DEBUG off unless "
            "--allow-production is given.")

    def add_arguments(self, parser):
        parser.add_argument("--allow-production", action="store_true",
                            help="load even though DEBUG is off (make run does: a demo on 127.0.0.1). Never on a "
                                 "server others reach: anyone may sign in as admin/admin.")

    def handle(self, *args, **options):
        if not settings.DEBUG and not options["allow_production"]:
            raise CommandError(
                "load_demo refused: DEBUG is off, so this looks like a production deploy, and the demo creates "
                "logins anyone can guess (admin/admin, agent/agent...). For a local demo run it with DEBUG=1, or "
                "pass --allow-production if you mean it (`check --deploy` then fails until those passwords are "
                "changed: journeys.E006).")
        report = demo_load()
        for line in report:
            self.stdout.write(line)
