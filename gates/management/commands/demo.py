"""manage.py demo: the README's first command, end to end.

It migrates the database, applies the demo configuration, starts the web server, a django-q2
worker and the sample wedding platform on loopback, then asks perfgate through its own API to
validate two builds, the way CI would: a good build, which passes and becomes the baseline, and
a build with injected slowdown, which is blocked. The worker runs real k6 for both.

A third act shows production: two releases of the good commit are validated in production and
watched after their deploy, with Vercel played by a local stand-in of its API (perfgate cannot
reach vercel.com here, and the output says so). The first release is watched healthy; the second
is watched, the sample API slows down by 2x, the probes fail, and perfgate rolls production back
to the first release through the stand-in.

It prints the check tables, the probes and the rollback, and the admin's address and login, and
keeps everything running until Ctrl-C (or SIGTERM), then stops every process it started.
"""

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from gates.audit import Actor
from gates.models import Project
from gates.report import check_table, summary_line
from integrations.models import VercelConnection
from integrations.services import token_create
from tests.fake_vercel import FakeVercel

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "demo" / "perfgate.yaml"
# Latencies well above this machine's noise (a loaded 2-core host adds 10-20 ms to some
# requests; at 20 ms that alone could hide a +50% regression).
GOOD_LATENCY_MS = 50.0
SLOW_LATENCY_MS = 75.0  # +50%: the regression the gate must catch
DEGRADED_LATENCY_MS = 2 * GOOD_LATENCY_MS  # what production slows to in the third act
READY_TIMEOUT = 60
# Probes of the first release before the second is deployed: its probe baseline (six give the
# noise test of the history mode something to stand on).
BASELINE_PROBES = 6
WATCH_TIMEOUT = 180


class Command(BaseCommand):
    help = "Run the perfgate demo: web server, worker, sample API and two real validations through the API."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Where the web server listens.")
        parser.add_argument(
            "--target-port", type=int, default=8001, help="Port of the sample wedding platform."
        )
        parser.add_argument(
            "--no-serve", action="store_true", help="Stop everything after the validations and the watch."
        )
        parser.add_argument(
            "--no-production",
            action="store_true",
            help="Skip the third act (production watched after the deploy, and rolled back).",
        )

    def handle(self, *args, **options):
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.vercel = None
        self.stopping = False
        # Both signals stop the demo, from its first step on. SIGINT is set explicitly: a demo
        # started as a background job of a non-interactive shell inherits SIGINT ignored, and
        # Python then never turns Ctrl-C into KeyboardInterrupt.
        signal.signal(signal.SIGTERM, self.stop_signal)
        signal.signal(signal.SIGINT, self.stop_signal)
        try:
            self.run(options)
        except KeyboardInterrupt:
            self.stdout.write("\nStopping…")
        finally:
            # A second Ctrl-C must not cut the clean-up short and leave processes behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.stop_all()
            if self.vercel is not None:
                self.vercel.stop()

    def stop_signal(self, signum, frame):
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt

    def run(self, options):
        host, port = options["addr"].rsplit(":", 1)
        for name, (bind_host, bind_port) in {
            "web server": (host, int(port)),
            "sample API": ("127.0.0.1", options["target_port"]),
        }.items():
            _require_free(name, bind_host, bind_port)
        self.step("Migrating the database")
        call_command("migrate", verbosity=0, interactive=False)
        self.step(f"Applying {DEMO_CONFIG.name}")
        call_command("apply_config", str(DEMO_CONFIG))
        project = Project.objects.get(slug="wedsync-web")
        if options["target_port"] != 8001:
            # perfgate.yaml's allowedHosts entry "127.0.0.1" opens its scenario's port (8001) only;
            # the sample API on another port must be listed with its port.
            project.allowed_hosts = [*project.allowed_hosts, f"127.0.0.1:{options['target_port']}"]
            project.save(update_fields=["allowed_hosts"])
        _, token = token_create(
            project=project,
            role="ci",
            name=f"demo {time.strftime('%Y-%m-%d %H:%M')}",
            actor=Actor("system", "demo"),
            environments=["staging", "production"],
            expires_days=1,
        )

        base_url = f"http://{options['addr']}"
        target_url = f"http://127.0.0.1:{options['target_port']}"
        self.start(
            "sample API",
            [
                sys.executable,
                "-m",
                "gates.loadtest.sample_target",
                "--port",
                str(options["target_port"]),
                "--latency-ms",
                str(GOOD_LATENCY_MS),
            ],
            ready=f"{target_url}/healthz",
        )
        self.start(
            "web server",
            [
                sys.executable,
                "manage.py",
                "runserver",
                options["addr"],
                "--noreload",
                "--insecure",
                "--skip-checks",
            ],
            ready=f"{base_url}/healthz",
        )
        self.start("worker", [sys.executable, "manage.py", "qcluster"], ready=None)
        self.step(f"perfgate on {base_url}, a worker, and the sample wedding platform on {target_url}")

        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {token}"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        good_commit = ""
        for label, latency in (("good", GOOD_LATENCY_MS), ("slow", SLOW_LATENCY_MS)):
            self.knobs(target_url, latency)
            build = f"demo-{stamp}-{label}"
            self.step(
                f"Build {build}: the sample API answers in {latency:g} ms; CI asks perfgate to check it"
            )
            commit = secrets.token_hex(20)
            document = self.validate(api, base_url, build, target_url, git_hash=commit)
            self.report(document)
            if label == "good" and document["status"] == "passed":
                good_commit = commit
                self.stdout.write(f"Build {build} is now the baseline of wedsync-web/staging.")

        if good_commit and not options["no_production"]:
            self.production(api, base_url, target_url, project, stamp, good_commit)

        if options["no_serve"]:
            return
        username, password = _admin_login()
        self.step("perfgate is running")
        self.stdout.write(
            f"  admin:    {base_url}/admin/\n  login:    {username}\n"
            f"  password: {password}   (shown once; run the demo again for a new one)\n"
            f"  API docs: {base_url}/api/docs/\nPress Ctrl-C to stop."
        )
        while not self.stopping:
            for name, child in self.children:
                if child.poll() is not None:
                    raise CommandError(f"The {name} stopped unexpectedly (exit {child.returncode}).")
            time.sleep(1)

    def step(self, text: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n==> {text}"))
        self.stdout.flush()  # each step shows when it starts, through a pipe or tee too

    def start(self, name: str, command: list[str], ready: str | None) -> None:
        # A session of its own: Ctrl-C reaches the demo alone, which then stops each process in
        # order (a worker's sentinel must be asked to stop, not have its workers killed under it).
        child = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=os.environ.copy(),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.children.append((name, child))
        deadline = time.monotonic() + READY_TIMEOUT
        while ready is not None:
            if child.poll() is not None:
                raise CommandError(f"The {name} did not start (exit {child.returncode}).")
            try:
                if requests.get(ready, timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise CommandError(f"The {name} did not answer at {ready} within {READY_TIMEOUT} s.")
            time.sleep(0.2)

    def knobs(self, target_url: str, latency: float) -> None:
        requests.post(f"{target_url}/_knobs", json={"latency_ms": latency}, timeout=5).raise_for_status()

    def report(self, document: dict) -> None:
        self.stdout.write(check_table(document["checks"], document.get("notices", ())))
        self.stdout.write("")
        self.stdout.write(summary_line(document))
        if document.get("statusReason"):
            self.stdout.write(document["statusReason"])

    def validate(
        self,
        api: requests.Session,
        base_url: str,
        build: str,
        target_url: str,
        *,
        git_hash: str,
        environment: str = "staging",
        context: dict | None = None,
    ) -> dict:
        response = api.post(
            f"{base_url}/api/ci-cd/performance/validate",
            timeout=30,
            json={
                "project": "wedsync-web",
                "environment": environment,
                "buildId": build,
                "gitHash": git_hash,
                "testConfig": {"targetUrl": target_url},
                "deploymentContext": context or {"provider": "other", "actor": "demo"},
            },
        )
        if response.status_code not in (200, 202):
            raise CommandError(f"perfgate refused the validation: {response.status_code} {response.text}")
        document = response.json()
        while document["status"] in ("queued", "running"):
            progress = document.get("progress") or {}
            if progress:
                self.stdout.write(
                    f"    {document['status']}: {progress['elapsedSeconds']:.0f} s, "
                    f"{progress['requests']} requests, {progress['requestRate']:.0f}/s"
                )
            else:
                self.stdout.write(f"    {document['status']}…")
            response = api.get(
                f"{base_url}/api/ci-cd/performance/status/{build}",
                timeout=40,
                params={"project": "wedsync-web", "environment": environment, "wait": 5},
            )
            response.raise_for_status()
            document = response.json()
        return document

    def production(self, api, base_url: str, target_url: str, project, stamp: str, commit: str) -> None:
        """The third act: two releases of the good commit deployed to production and watched; the
        second slows down and is rolled back to the first through a local stand-in of Vercel."""
        self.vercel = FakeVercel().start()
        self.probes_shown: dict[str, int] = {}
        VercelConnection.objects.update_or_create(
            project=project,
            defaults={"token": self.vercel.token, "team_id": self.vercel.team_id, "api_url": self.vercel.url},
        )
        self.step(
            f"Production. Vercel is played by a LOCAL STAND-IN of its REST API on {self.vercel.url} "
            "(tests/fake_vercel.py: perfgate cannot reach vercel.com here)"
        )
        self.knobs(target_url, GOOD_LATENCY_MS)
        releases = []
        for number in (1, 2):
            build = f"demo-{stamp}-release-{number}"
            deployment = f"dpl_demo{stamp.replace('-', '')}r{number}"
            self.vercel.add_deployment(
                deployment_id=deployment, url=f"wedsync-web-r{number}.vercel.app", sha=commit
            )
            self.step(
                f"Release {number}: build {build} of the good commit, Vercel deployment {deployment}; "
                "CI asks perfgate to check it in production"
            )
            document = self.validate(
                api,
                base_url,
                build,
                target_url,
                git_hash=commit,
                environment="production",
                context={"provider": "vercel", "deploymentId": deployment, "actor": "demo"},
            )
            self.report(document)
            if document["status"] != "passed":
                self.stdout.write("The release did not pass; nothing is deployed, so nothing is watched.")
                return
            self.stdout.write(f"Vercel promotes {deployment} to production; CI asks perfgate to watch it.")
            response = api.post(
                f"{base_url}/api/ci-cd/performance/watch",
                timeout=30,
                json={
                    "project": "wedsync-web",
                    "buildId": build,
                    "environment": "production",
                    "deploymentUrl": target_url,
                    "deploymentId": deployment,
                },
            )
            if response.status_code not in (200, 201):
                raise CommandError(f"perfgate refused the watch: {response.status_code} {response.text}")
            releases.append(build)
            if number == 1:
                self.follow_watch(api, base_url, build, until_probes=BASELINE_PROBES)
        build = releases[-1]
        self.follow_watch(api, base_url, build, until_probes=2)
        self.knobs(target_url, DEGRADED_LATENCY_MS)
        self.step(
            f"The sample API slows down: it now answers in {DEGRADED_LATENCY_MS:g} ms "
            f"instead of {GOOD_LATENCY_MS:g} ms"
        )
        watch = self.follow_watch(api, base_url, build, until_done=True)
        self.knobs(target_url, GOOD_LATENCY_MS)
        self.stdout.write(f"Watch: {watch['state']}. {watch.get('stateReason', '')}")
        rollback = watch.get("rollback") or {}
        if rollback:
            self.stdout.write(f"Rollback to build {rollback.get('targetBuildId')}: {rollback['state']}.")
            self.stdout.write(rollback.get("detail", ""))
        calls = [r for r in self.vercel.requests if r.method == "POST" and "/rollback/" in r.path]
        for call in calls:
            self.stdout.write(
                f"The stand-in of Vercel's API received: POST {call.path} → {call.status}; "
                f"production is now served by {self.vercel.production_deployment()}."
            )

    def follow_watch(
        self, api, base_url: str, build: str, *, until_probes: int = 0, until_done: bool = False
    ):
        """Print each probe of the build's watch as it comes; return the watch when it has
        ``until_probes`` probes, or (``until_done``) when it ended and its rollback, if any, did."""
        seen = self.probes_shown.get(build, 0)
        deadline = time.monotonic() + WATCH_TIMEOUT
        while time.monotonic() < deadline:
            response = api.get(
                f"{base_url}/api/ci-cd/performance/status/{build}",
                timeout=30,
                params={"project": "wedsync-web", "environment": "production"},
            )
            response.raise_for_status()
            watch = response.json().get("watch") or {}
            probe = watch.get("lastProbe")
            if probe and probe["number"] > seen:
                seen = self.probes_shown[build] = probe["number"]
                self.stdout.write(f"    probe {probe['number']}: {probe['outcome']} — {probe['reason']}")
            if until_probes and watch.get("probes", {}).get("run", 0) >= until_probes:
                return watch
            rollback = watch.get("rollback") or {}
            settled = not rollback or rollback.get("state") not in ("approved", "running", "proposed")
            if until_done and watch.get("state") not in (None, "waiting", "watching") and settled:
                return watch
            time.sleep(0.5)
        raise CommandError(f"The watch of build {build} did not get there within {WATCH_TIMEOUT} s.")

    def stop_all(self) -> None:
        for name, child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.stderr.write(f"The {name} did not stop in 20 s; killing it.")
                    child.kill()
                    child.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # whatever it left behind
        self.children.clear()


def _require_free(name: str, host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CommandError(
                f"Cannot start the {name} on {host}:{port}: {exc.strerror}. "
                "Stop what uses it, or choose another port (see --help)."
            ) from None


def _admin_login() -> tuple[str, str]:
    """An `admin` superuser with a fresh random password."""
    password = secrets.token_urlsafe(12)
    user, _ = get_user_model().objects.get_or_create(
        username="admin", defaults={"email": "admin@example.invalid"}
    )
    user.is_staff = user.is_superuser = True
    user.set_password(password)
    user.save()
    return user.username, password
