"""manage.py apply_config perfgate.yaml [--dry-run] | --schema: configuration as code."""

import json

from django.core.management.base import BaseCommand, CommandError

from gates.config import ConfigError, config_apply, config_json_schema, config_noise_warnings, load_config
from gates.management.commands._common import USAGE_ERROR, cli_actor


class Command(BaseCommand):
    help = (
        "Create or update projects, environments, scenarios and rules from a perfgate.yaml, "
        "idempotently; print what changed. --schema prints the file's JSON Schema instead."
    )

    def add_arguments(self, parser):
        parser.add_argument("config_file", metavar="FILE", nargs="?")
        parser.add_argument("--dry-run", action="store_true", help="Print the changes without applying them.")
        parser.add_argument(
            "--schema",
            action="store_true",
            help="Print the JSON Schema of perfgate.yaml (docs/perfgate.schema.json) and exit.",
        )

    def handle(self, *args, **options):
        if options["schema"]:
            self.stdout.write(json.dumps(config_json_schema(), indent=2, ensure_ascii=False))
            return
        if not options["config_file"]:
            raise CommandError(
                "Name the perfgate.yaml to apply (or ask for --schema).", returncode=USAGE_ERROR
            )
        try:
            projects, source = load_config(options["config_file"])
        except ConfigError as exc:
            raise CommandError(f"Nothing was applied. {exc}", returncode=USAGE_ERROR) from exc
        changes = config_apply(
            projects=projects, source=source, actor=cli_actor(), dry_run=options["dry_run"]
        )
        for change in changes:
            self.stdout.write(str(change))
        for warning in config_noise_warnings(projects):
            self.stdout.write(self.style.WARNING(warning))
        if options["dry_run"]:
            self.stdout.write(f"Dry run: {len(changes)} change(s) would be applied; nothing was written.")
        elif changes:
            self.stdout.write(self.style.SUCCESS(f"Applied {len(changes)} change(s) from {source}."))
        else:
            self.stdout.write(f"No changes: the database already matches {source}.")
