"""Create or refresh the role groups (ops admins, business-unit editors, approvers, agents, analysts)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from journeys.models import BusinessUnit
from journeys.services.governance import business_unit_grant_editor, roles_setup


class Command(BaseCommand):
    help = "Create/refresh the role groups; optionally make a user an editor of a business unit."

    def add_arguments(self, parser):
        parser.add_argument("--editor", nargs=2, metavar=("USERNAME", "UNIT_SLUG"), action="append", default=[],
                            help="grant USERNAME the editor role on business unit UNIT_SLUG (repeatable)")

    def handle(self, *args, editor, **options):
        for name, count in roles_setup().items():
            self.stdout.write(f"{name}: {count} permissions")
        User = get_user_model()
        for username, slug in editor:
            try:
                user, unit = User.objects.get(username=username), BusinessUnit.objects.get(slug=slug)
            except (User.DoesNotExist, BusinessUnit.DoesNotExist) as exc:
                raise CommandError(str(exc)) from None
            business_unit_grant_editor(unit=unit, user=user, reason="setup_roles command")
            self.stdout.write(f"{username} edits the workflows of {slug}")
