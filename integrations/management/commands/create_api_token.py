"""manage.py create_api_token --project P --role ci|ops|auditor: prints the new token alone on
standard output (everything else goes to standard error), so `TOKEN=$(manage.py …)` works."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from gates.errors import ServiceError
from gates.management.commands._common import USAGE_ERROR, cli_actor
from gates.models import Project
from integrations.models import ApiToken
from integrations.services import token_create


class Command(BaseCommand):
    help = "Create an API token for the CI API and print it (it is shown only this once)."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument("--role", required=True, choices=ApiToken.Role.values)
        parser.add_argument(
            "--environments", default="", help="Comma-separated, e.g. staging,production (default: all)."
        )
        parser.add_argument("--expires-days", type=int, help="Days until it stops working (default: never).")
        parser.add_argument("--owner", help="Username of the person responsible for it.")
        parser.add_argument("--name", help="What it is for (default: '<role> token').")
        parser.add_argument(
            "--can-block", action="store_true", help="Let a CI token also block builds by hand."
        )

    def handle(self, *args, **options):
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project {options['project']!r}.", returncode=USAGE_ERROR)
        owner = None
        if options["owner"]:
            owner = get_user_model().objects.filter(username=options["owner"]).first()
            if owner is None:
                raise CommandError(f"No user {options['owner']!r}.", returncode=USAGE_ERROR)
        environments = [name.strip() for name in options["environments"].split(",") if name.strip()]
        try:
            token, plaintext = token_create(
                project=project,
                role=options["role"],
                name=options["name"] or f"{options['role']} token",
                actor=cli_actor(),
                environments=environments,
                expires_days=options["expires_days"],
                owner=owner,
                can_block=options["can_block"],
            )
        except ServiceError as exc:
            raise CommandError(exc.detail, returncode=USAGE_ERROR) from exc
        self.stderr.write(f"Created {token}. Copy the token now: it is not stored and cannot be shown again.")
        self.stdout.write(plaintext)
