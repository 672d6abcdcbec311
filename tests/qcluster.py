"""Real django-q2 workers for tests: `manage.py qcluster` subprocesses on the test database and
the test run's broker (the ORM broker on SQLite, Redis when REDIS_URL is set)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """The test database as a URL a subprocess can open."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


def worker_environment(**overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DEBUG": "false",
        # Tasks are signed with SECRET_KEY: the workers must share the test process's.
        "SECRET_KEY": settings.SECRET_KEY,
        # ... and its key list for stored secrets.
        "PERFGATE_SECRETS_KEYS": ",".join(settings.PERFGATE_SECRETS_KEYS),
        "Q_CLUSTER_NAME": settings.Q_CLUSTER["name"],
        "Q_WORKERS": "1",
        "PERFGATE_LEASE_SECONDS": "4",
        "PERFGATE_LEASE_RENEW_SECONDS": "1",
        "LOG_LEVEL": "WARNING",
    }
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    else:
        env.pop("REDIS_URL", None)
    env.update(overrides)
    return env


@contextmanager
def qcluster(**overrides: str):
    """A running `manage.py qcluster`; stopped (SIGTERM, then SIGKILL) when the block ends."""
    log = open(ROOT / "test-qcluster.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=worker_environment(**overrides),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        time.sleep(2.0)  # the sentinel forks its worker and starts polling
        assert process.poll() is None, f"qcluster exited at once with {process.returncode}"
        yield process
    finally:
        # SIGTERM to the sentinel alone: it stops its workers in order. (Signalling the whole
        # group kills the workers under it, and the sentinel then waits for them forever.)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything left behind
        log.close()


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str = "the condition"):
    """Poll until ``predicate()`` returns something truthy; return it, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
