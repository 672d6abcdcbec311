"""manage.py demo: the README's first command, end to end on the embedded defaults.

It migrates the database, applies the demo configuration, starts the sample wedding platform on
loopback, runs two real k6 validations (a good build that passes and becomes the baseline, then a
build with injected slowdown that is blocked), prints both check tables and leaves the admin
running until Ctrl-C.
"""

import secrets
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from baselines.selectors import baseline_active
from gates.audit import Actor
from gates.loadtest.k6 import K6Spec, run_k6
from gates.loadtest.sample_target import start_in_thread
from gates.management.commands._common import render_validation
from gates.models import Environment, Project, Run, Scenario
from gates.services import validation_ingest

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "demo" / "perfgate.yaml"
GOOD_LATENCY_MS = 20.0
SLOW_LATENCY_MS = 30.0  # +50%: the regression the gate must catch


class Command(BaseCommand):
    help = "Run the perfgate demo: two real k6 validations against a sample API, then serve the admin."

    def add_arguments(self, parser):
        parser.add_argument(
            "--target-port", type=int, default=8001, help="Port of the sample wedding platform."
        )
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Where the admin is served.")
        parser.add_argument("--no-serve", action="store_true", help="Stop after the two validations.")

    def handle(self, *args, **options):
        self.step("Migrating the database")
        call_command("migrate", verbosity=0, interactive=False)
        call_command("createcachetable", verbosity=0)
        self.step(f"Applying {DEMO_CONFIG.name}")
        call_command("apply_config", str(DEMO_CONFIG))

        project = Project.objects.get(slug="wedsync-web")
        environment = Environment.objects.get(project=project, name=Environment.Name.STAGING)
        scenario = Scenario.objects.get(project=project, is_default=True)

        try:
            target = start_in_thread(options["target_port"], latency_ms=GOOD_LATENCY_MS)
        except OSError as exc:
            raise CommandError(
                f"Cannot start the sample API on 127.0.0.1:{options['target_port']}: {exc}. "
                "Pick another port with --target-port."
            ) from exc
        self.step(f"Sample wedding platform API on {target.url} (guest list, RSVP, photo upload)")

        stamp = time.strftime("%Y%m%d-%H%M%S")
        try:
            for label, latency in (("good", GOOD_LATENCY_MS), ("slow", SLOW_LATENCY_MS)):
                target.knobs.latency_ms = latency
                build = f"demo-{stamp}-{label}"
                self.step(
                    f"Build {build}: k6 runs {scenario.name} ({scenario.vus} VUs, "
                    f"{scenario.duration_seconds}s) against {target.url} at {latency:g} ms server latency"
                )
                validation = self.validate(project, environment, scenario, build, target.url)
                self.stdout.write(render_validation(validation))
                baseline = baseline_active(project, environment, scenario)
                if baseline is not None and baseline.source_validation_id == validation.pk:
                    self.stdout.write(
                        f"Build {build} is now baseline v{baseline.version} of {scenario}/{environment.name}."
                    )
        finally:
            target.shutdown()
            target.server_close()

        if options["no_serve"]:
            return
        username, password = self.admin_login()
        self.step("The admin is running")
        self.stdout.write(
            f"  address:  http://{options['addr']}/admin/\n  login:    {username}\n"
            f"  password: {password}   (shown once; run the demo again for a new one)\n"
            "Press Ctrl-C to stop."
        )
        call_command(
            "runserver", options["addr"], use_reloader=False, skip_checks=True, insecure_serving=True
        )

    def step(self, text: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n==> {text}"))

    def validate(self, project, environment, scenario, build: str, target_url: str):
        spec = K6Spec(
            script_text=scenario.script_text,
            target_url=target_url,
            vus=scenario.vus,
            duration_seconds=scenario.duration_seconds,
        )
        with tempfile.TemporaryDirectory(prefix="perfgate-demo-") as workdir:
            outcome = run_k6(
                spec,
                Path(workdir),
                timeout_seconds=scenario.duration_seconds + 60,
                binary=settings.PERFGATE_K6_BINARY,
            )
            if not outcome.raw_path.exists():
                raise CommandError(
                    f"k6 produced no results (exit {outcome.exit_code}):\n{outcome.stderr_tail}"
                )
            validation, _ = validation_ingest(
                project=project,
                environment=environment,
                build_id=build,
                git_hash=secrets.token_hex(20),
                results=outcome.raw_path,
                results_format="k6-ndjson",
                actor=Actor("system", "demo"),
                scenario=scenario,
                source=Run.Source.EXECUTED,
            )
        return validation

    def admin_login(self) -> tuple[str, str]:
        """An `admin` superuser with a fresh random password."""
        password = secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(
            username="admin", defaults={"email": "admin@example.invalid"}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        return user.username, password
