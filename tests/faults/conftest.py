"""What the fault tests share: a private PostgreSQL cluster a test may restart or stop (never the
shared server), a gated project testing a local target, and the API calls CI makes."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import pytest
from django.db import connection

from gates.loadtest.sample_target import start_in_thread
from gates.models import Environment, Project, Scenario, ThresholdRule
from tests.conftest import Api, make_token
from tests.qcluster import ROOT, wait_for, worker_environment

SCRIPT = (ROOT / "gates" / "demo" / "guest-list.js").read_text()
TEMPLATE = "perfgate_template"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _postgres_binary(name: str) -> str:
    """A PostgreSQL server binary: on PATH, or the newest of Debian's versioned directories."""
    found = shutil.which(name) or max(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), default=None)
    if found is None:
        pytest.fail(f"the fault tests need PostgreSQL's {name}, which is not installed")
    return found


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: as root, they run as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of the test run's own, on a free port of 127.0.0.1, in a temporary
    directory: what a test stops or restarts is never the server the rest of the suite uses."""

    directory: Path
    port: int

    def pg_ctl(self, *args: str) -> None:
        command = _as_postgres([_postgres_binary("pg_ctl"), "-D", str(self.directory / "data"), *args])
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.pg_ctl("start", "-w", "-l", self.log, "-o", options)

    def stop(self) -> None:
        self.pg_ctl("stop", "-w", "-m", "fast")

    def restart(self) -> float:
        """Restart as ops would (fast shutdown: every connection is cut); the seconds it took."""
        started = time.monotonic()
        self.pg_ctl("restart", "-w", "-m", "fast", "-l", self.log)
        return time.monotonic() - started

    @property
    def log(self) -> str:
        # The server's output goes here, never to pg_ctl's: a pipe it kept would never close.
        return str(self.directory / "server.log")

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, statement: str) -> None:
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as admin:
            admin.execute(statement)


@pytest.fixture(scope="session")
def private_postgres():
    """A private cluster with a migrated template database, for the whole session."""
    directory = Path(tempfile.mkdtemp(prefix="perfgate-faults-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    cluster = PrivatePostgres(directory, free_port())
    initdb = [_postgres_binary("initdb"), "-D", str(directory / "data"), "-U", "postgres", "-A", "trust"]
    subprocess.run(_as_postgres([*initdb, "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
    cluster.start()
    try:
        cluster.execute(f"CREATE DATABASE {TEMPLATE}")
        environment = worker_environment(DATABASE_URL=cluster.url(TEMPLATE))
        for command in (["migrate", "--no-input"], ["createcachetable"]):
            subprocess.run(
                [sys.executable, "manage.py", *command],
                cwd=ROOT,
                env=environment,
                check=True,
                capture_output=True,
                timeout=300,
            )
        yield cluster
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            cluster.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def private_database(private_postgres, django_db_blocker):
    """A fresh database on the private cluster, and Django's connection pointed at it for this
    test only (the workers started by ``tests.qcluster`` follow it); put back afterwards."""
    name = f"perfgate_fault_{uuid.uuid4().hex[:12]}"
    private_postgres.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    settings_dict = connection.settings_dict
    saved = {key: settings_dict.get(key) for key in ("NAME", "HOST", "PORT", "USER", "PASSWORD")}
    with django_db_blocker.unblock():
        connection.close()
        settings_dict.update(
            NAME=name, HOST="127.0.0.1", PORT=str(private_postgres.port), USER="postgres", PASSWORD=""
        )
        try:
            yield private_postgres
        finally:
            connection.close()
            settings_dict.update(saved)


@pytest.fixture
def target():
    """The sample wedding platform on loopback, answering in about 50 ms."""
    server = start_in_thread(latency_ms=50.0, jitter_ms=1.0)
    yield server
    server.shutdown()
    server.server_close()


@dataclass
class Gate:
    """A gated project (staging fail-open, production fail-closed, no staging pass required) and
    its CI token."""

    project: Project
    ci: Api

    def validate(self, build: str, environment: str = "staging", **test_config) -> dict:
        body = {
            "project": self.project.slug,
            "environment": environment,
            "buildId": build,
            "gitHash": "c" * 40,
        }
        if test_config:
            body["testConfig"] = test_config
        response = self.ci.post("/api/ci-cd/performance/validate", body)
        assert response.status_code == 202, response.content
        return response.json()

    def status(self, build: str, environment: str = "staging") -> dict:
        response = self.ci.get(f"/api/ci-cd/performance/status/{build}", {"environment": environment})
        assert response.status_code == 200, response.content
        return response.json()

    def finished(self, build: str, environment: str = "staging", timeout: float = 60) -> dict:
        return wait_for(
            lambda: (s := self.status(build, environment))["status"] not in ("queued", "running") and s,
            timeout=timeout,
            what=f"build {build} to finish",
        )


def make_gate(target_url: str) -> Gate:
    """A project testing ``target_url`` for 3 s after a 1 s warm-up, with an absolute rule."""
    project = Project.objects.create(slug="wedsync-web", name="WedSync", allowed_hosts=["127.0.0.1"])
    Environment.objects.create(project=project, name="staging", fail_closed=False)
    Environment.objects.create(project=project, name="production", fail_closed=True)
    scenario = Scenario.objects.create(
        project=project,
        name="guest-list",
        script_text=SCRIPT,
        target_url=target_url,
        vus=5,
        duration_seconds=3,
        warmup_seconds=1,
        max_duration_seconds=120,
        min_requests=20,
        is_default=True,
    )
    ThresholdRule.objects.create(
        project=project, scenario=scenario, metric="http_req_duration", threshold="p(95)<2000"
    )
    return Gate(project, Api(make_token(project, "ci")[1]))


def k6_under(process) -> list[psutil.Process]:
    """The k6 processes a qcluster started (the machine may run other engineers' k6 too)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return [
            child for child in psutil.Process(process.pid).children(recursive=True) if child.name() == "k6"
        ]
    return []


def kill_every_worker(cluster) -> None:
    """kill -9 the whole process group of a qcluster, its k6 with it, and wait until k6 is gone;
    then remove the run directories the dead workers could not."""
    k6 = k6_under(cluster)
    assert k6, "no k6 ran under this qcluster"
    workdirs = [process.cwd() for process in k6]
    os.killpg(cluster.pid, signal.SIGKILL)
    wait_for(
        lambda: not any(process.is_running() and process.status() != "zombie" for process in k6),
        timeout=10,
        what="k6 to die with its worker",
    )
    for workdir in workdirs:
        shutil.rmtree(workdir, ignore_errors=True)
