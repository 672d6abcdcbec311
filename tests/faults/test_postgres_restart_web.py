"""A PostgreSQL restart under the recommended server (gunicorn with uvicorn workers, pooled
connections): the first requests after it are answered, not failed on connections the restart
broke. The database is a private cluster (tests/faults/conftest.py), never the shared one."""

import contextlib
import subprocess
import sys

import pytest
import requests
from django.db import connection

from tests.conftest import make_token
from tests.faults.conftest import free_port, make_gate
from tests.qcluster import ROOT, wait_for, worker_environment

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="restarts a private PostgreSQL cluster"),
]


@pytest.fixture
def asgi_server(private_database):
    """perfgate served as the README deploys it, on the private cluster's test database."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "--workers", "1"]
    command += ["--bind", f"127.0.0.1:{port}", "--log-level", "error", "perfgate_site.asgi"]
    server = subprocess.Popen(command, cwd=ROOT, env=worker_environment(PERFGATE_WEB_REAPER_SECONDS="0"))
    url = f"http://127.0.0.1:{port}"

    def up():
        # The first answer waits for the worker to boot (Django's set-up): a slow one is asked again.
        with contextlib.suppress(requests.ConnectionError, requests.Timeout):
            return requests.get(f"{url}/healthz", timeout=2).ok
        return False

    try:
        wait_for(up, timeout=30, what="the ASGI server to answer")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
def test_the_first_requests_after_a_restart_are_answered(private_database, asgi_server):
    gate = make_gate("http://127.0.0.1:9")
    gate.validate("restart-1")
    headers = {"Authorization": f"Bearer {make_token(gate.project, 'ci')[1]}"}
    status = f"{asgi_server}/api/ci-cd/performance/status/restart-1?environment=staging"
    # Every connection the pool keeps has served a request before the restart.
    before = [requests.get(status, headers=headers, timeout=10) for _ in range(6)]
    assert [answer.status_code for answer in before] == [200] * 6, before[0].text[:300]

    private_database.restart()

    answers = [requests.get(status, headers=headers, timeout=10) for _ in range(6)]
    assert [answer.status_code for answer in answers] == [200] * 6, answers[0].text[:300]
    assert {answer.json()["status"] for answer in answers} == {"queued"}
