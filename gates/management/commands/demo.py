"""manage.py demo: the README's first command, end to end.

It migrates the database, applies the demo configuration, starts the web server, a django-q2
worker and the sample wedding platform on loopback, then asks perfgate through its own API to
validate two builds, the way CI would: a good build, which passes and becomes the baseline, and
a build with injected slowdown, which is blocked. The worker runs real k6 for both. It prints
both check tables and the admin's address and login, and keeps everything running until Ctrl-C,
then stops every process it started.
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
from integrations.services import token_create

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "demo" / "perfgate.yaml"
# Latencies well above this machine's noise (a loaded 2-core host adds 10-20 ms to some
# requests; at 20 ms that alone could hide a +50% regression).
GOOD_LATENCY_MS = 50.0
SLOW_LATENCY_MS = 75.0  # +50%: the regression the gate must catch
READY_TIMEOUT = 60


class Command(BaseCommand):
    help = "Run the perfgate demo: web server, worker, sample API and two real validations through the API."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Where the web server listens.")
        parser.add_argument(
            "--target-port", type=int, default=8001, help="Port of the sample wedding platform."
        )
        parser.add_argument(
            "--no-serve", action="store_true", help="Stop everything after the two validations."
        )

    def handle(self, *args, **options):
        self.children: list[tuple[str, subprocess.Popen]] = []
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
            environments=["staging"],
            expires_days=1,
        )

        base_url = f"http://{options['addr']}"
        target_url = f"http://127.0.0.1:{options['target_port']}"
        stopping = {"now": False}

        def stop(signum, frame):
            stopping["now"] = True
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        try:
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
            for label, latency in (("good", GOOD_LATENCY_MS), ("slow", SLOW_LATENCY_MS)):
                requests.post(
                    f"{target_url}/_knobs", json={"latency_ms": latency}, timeout=5
                ).raise_for_status()
                build = f"demo-{stamp}-{label}"
                self.step(
                    f"Build {build}: the sample API answers in {latency:g} ms; CI asks perfgate to check it"
                )
                document = self.validate(api, base_url, build, target_url)
                self.stdout.write(check_table(document["checks"], document.get("notices", ())))
                self.stdout.write("")
                self.stdout.write(summary_line(document))
                if document.get("statusReason"):
                    self.stdout.write(document["statusReason"])
                if label == "good" and document["status"] == "passed":
                    self.stdout.write(f"Build {build} is now the baseline of wedsync-web/staging.")

            if options["no_serve"]:
                return
            username, password = _admin_login()
            self.step("perfgate is running")
            self.stdout.write(
                f"  admin:    {base_url}/admin/\n  login:    {username}\n"
                f"  password: {password}   (shown once; run the demo again for a new one)\n"
                f"  API docs: {base_url}/api/docs/\nPress Ctrl-C to stop."
            )
            while not stopping["now"]:
                for name, child in self.children:
                    if child.poll() is not None:
                        raise CommandError(f"The {name} stopped unexpectedly (exit {child.returncode}).")
                time.sleep(1)
        except KeyboardInterrupt:
            self.stdout.write("\nStopping…")
        finally:
            self.stop_all()

    def step(self, text: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n==> {text}"))

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

    def validate(self, api: requests.Session, base_url: str, build: str, target_url: str) -> dict:
        response = api.post(
            f"{base_url}/api/ci-cd/performance/validate",
            timeout=30,
            json={
                "project": "wedsync-web",
                "environment": "staging",
                "buildId": build,
                "gitHash": secrets.token_hex(20),
                "testConfig": {"targetUrl": target_url},
                "deploymentContext": {"provider": "other", "actor": "demo"},
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
                params={"project": "wedsync-web", "environment": "staging", "wait": 5},
            )
            response.raise_for_status()
            document = response.json()
        return document

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
