"""manage.py evaluate: decide on a results file from the command line.

Exit status: 0 when the deployment is allowed, 1 when it is blocked, 2 on a usage error
(unknown project, unreadable results).
"""

from django.core.management.base import BaseCommand, CommandError

from gates.errors import ServiceError
from gates.management.commands._common import (
    USAGE_ERROR,
    cli_actor,
    project_and_environment,
    render_validation,
)
from gates.results import FORMATS
from gates.services import validation_request


class Command(BaseCommand):
    help = "Evaluate a load-test results file against a project's rules and print the check table."

    def add_arguments(self, parser):
        parser.add_argument("results_file", metavar="RESULTS_FILE")
        parser.add_argument("--project", required=True)
        parser.add_argument("--environment", required=True)
        parser.add_argument("--build", required=True, help="The build id (CI's unique id for this build).")
        parser.add_argument("--git-hash", required=True)
        parser.add_argument("--scenario", help="Scenario name (default: the project's default scenario).")
        parser.add_argument("--format", choices=FORMATS, help="Results format (default: detected).")

    def handle(self, *args, **options):
        project, environment = project_and_environment(options["project"], options["environment"])
        try:
            validation, created = validation_request(
                project=project,
                environment=environment,
                build_id=options["build"],
                git_hash=options["git_hash"],
                results=options["results_file"],
                results_format=options["format"],
                actor=cli_actor(),
                test_config={"scenario": options["scenario"]} if options["scenario"] else None,
            )
        except ServiceError as exc:
            raise CommandError(exc.detail, returncode=USAGE_ERROR) from exc
        if not created:
            self.stderr.write(
                f"Build {validation.build_id} was already evaluated; showing its recorded outcome."
            )
        self.stdout.write(render_validation(validation))
        if not validation.deployment_allowed:
            raise SystemExit(1)
