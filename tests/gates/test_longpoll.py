"""Long-polls (status?wait=N): woken by PostgreSQL's NOTIFY (or SQLite's poll), capped per token,
and, in the real server (gunicorn with uvicorn workers), holding no thread while they wait."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest
import requests
from django.contrib.auth import get_user_model
from django.db import connection

from gates import waiting
from gates.models import Validation
from gates.services import validation_evaluate
from tests.conftest import Api, make_token
from tests.factories import make_results, make_validation
from tests.qcluster import ROOT, wait_for, worker_environment

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="LISTEN/NOTIFY and its trigger exist on PostgreSQL only"
)
sqlite_only = pytest.mark.skipif(connection.vendor != "sqlite", reason="the hub polls on SQLite only")


def queued(project, environment, actor, build_id: str) -> Validation:
    validation, _ = make_validation(
        project=project, environment=environment, build_id=build_id, git_hash="e" * 40, actor=actor
    )
    return validation


class Waiter(threading.Thread):
    """One long-poll through the test client (WSGI, so Django runs the async view in a loop of
    its own), in a thread: ``answer`` and ``answered_at`` once it returns."""

    def __init__(self, token: str, build_id: str, wait: int):
        super().__init__()
        self.api = Api(token)
        self.url = f"/api/ci-cd/performance/status/{build_id}"
        self.params = {"environment": "staging", "wait": wait}
        self.answer = None
        self.answered_at = None
        self.start()

    def run(self):
        try:
            self.answer = self.api.get(self.url, self.params)
            self.answered_at = time.monotonic()
        finally:
            connection.close()


def waiting_settled(count: int, token_id: int | None = None) -> None:
    """Until ``count`` long-polls wait in this process, and a moment more for each to be past its
    first look at the status: a change made after this reaches them only through the hub."""
    wait_for(lambda: waiting.waiting_count(token_id) == count, timeout=10, interval=0.05, what="the waiters")
    time.sleep(0.5)


@postgres_only
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_a_waiter_is_woken_by_the_notification_not_by_a_poll(project, staging, actor, settings):
    settings.PERFGATE_LONGPOLL_POLL_SECONDS = 30  # a poll could not answer before the deadline
    validation = queued(project, staging, actor, "b-notify")
    waiter = Waiter(make_token(project, "ci")[1], "b-notify", wait=10)
    waiting_settled(1)

    validation_evaluate(validation=validation, results=make_results(), actor=actor)
    decided_at = time.monotonic()
    waiter.join(timeout=15)

    assert waiter.answer.status_code == 200 and waiter.answer.json()["status"] == "passed"
    latency = waiter.answered_at - decided_at
    print(f"verdict committed -> waiter answered: {latency * 1000:.0f} ms")
    assert latency < 0.5


@postgres_only
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_without_the_trigger_a_waiter_on_postgresql_hears_nothing_until_its_deadline(
    project, staging, actor, settings
):
    settings.PERFGATE_LONGPOLL_POLL_SECONDS = 30
    validation = queued(project, staging, actor, "b-silent")
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE gates_validation DISABLE TRIGGER gates_validation_status_notify")
    try:
        started = time.monotonic()
        waiter = Waiter(make_token(project, "ci")[1], "b-silent", wait=2)
        waiting_settled(1)
        validation_evaluate(validation=validation, results=make_results(), actor=actor)
        waiter.join(timeout=10)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE gates_validation ENABLE TRIGGER gates_validation_status_notify")

    # Answered at the deadline, with the validation as it is by then.
    assert waiter.answered_at - started >= 1.9
    assert waiter.answer.json()["status"] == "passed"


@postgres_only
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_when_the_listener_connection_drops_waiters_are_answered_by_the_poll(
    project, staging, actor, settings
):
    settings.PERFGATE_LONGPOLL_POLL_SECONDS = 0.25
    validation = queued(project, staging, actor, "b-dropped")
    waiter = Waiter(make_token(project, "ci")[1], "b-dropped", wait=10)
    waiting_settled(1)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = %s",
            [f"LISTEN {waiting.CHANNEL}"],
        )
        assert cursor.fetchall() == [(True,)], "the hub's one listener"
    time.sleep(0.3)

    validation_evaluate(validation=validation, results=make_results(), actor=actor)
    decided_at = time.monotonic()
    waiter.join(timeout=15)

    assert waiter.answer.json()["status"] == "passed"
    # Well before the hub listens again (RELISTEN_SECONDS): the poll answered.
    assert waiter.answered_at - decided_at < min(2.0, waiting.RELISTEN_SECONDS)


@sqlite_only
@pytest.mark.django_db(transaction=True)
def test_on_sqlite_a_waiter_is_answered_by_the_poll(project, staging, actor, settings):
    settings.PERFGATE_LONGPOLL_POLL_SECONDS = 0.25
    validation = queued(project, staging, actor, "b-poll")
    waiter = Waiter(make_token(project, "ci")[1], "b-poll", wait=10)
    waiting_settled(1)

    validation_evaluate(validation=validation, results=make_results(), actor=actor)
    decided_at = time.monotonic()
    waiter.join(timeout=15)

    assert waiter.answer.json()["status"] == "passed"
    assert waiter.answered_at - decided_at < 1.5


@pytest.mark.django_db(transaction=True)
def test_a_token_beyond_its_waiters_gets_429_while_other_tokens_still_wait(project, staging, actor, settings):
    settings.PERFGATE_MAX_WAITERS_PER_TOKEN = 2
    queued(project, staging, actor, "b-capped")
    busy, busy_token = make_token(project, "ci")
    waiters = [Waiter(busy_token, "b-capped", wait=3) for _ in range(2)]
    waiting_settled(2, busy.pk)

    refused = Api(busy_token).get(
        "/api/ci-cd/performance/status/b-capped", {"environment": "staging", "wait": 3}
    )
    other = Api(make_token(project, "ci")[1]).get(
        "/api/ci-cd/performance/status/b-capped", {"environment": "staging", "wait": 1}
    )
    for waiter in waiters:
        waiter.join(timeout=10)
    again = Api(busy_token).get(
        "/api/ci-cd/performance/status/b-capped", {"environment": "staging", "wait": 1}
    )

    assert refused.status_code == 429 and refused["Retry-After"] == str(waiting.RETRY_AFTER_SECONDS)
    body = refused.json()
    assert set(body) == {"error", "detail", "fields"} and body["error"] == "throttled"
    assert other.status_code == 200 and other.json()["status"] == "queued"
    assert [waiter.answer.status_code for waiter in waiters] == [200, 200]
    assert again.status_code == 200 and waiting.waiting_count() == 0


@pytest.mark.django_db(transaction=True)
def test_wait_on_a_decided_validation_answers_at_once_and_takes_no_slot(project, staging, actor, ci_api):
    validation = queued(project, staging, actor, "b-done")
    validation_evaluate(validation=validation, results=make_results(), actor=actor)
    started = time.monotonic()
    response = ci_api.get("/api/ci-cd/performance/status/b-done", {"environment": "staging", "wait": 20})
    assert response.status_code == 200 and response.json()["status"] == "passed"
    assert time.monotonic() - started < 1


# The recommended server, for real: gunicorn managing one uvicorn worker, on the test database.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))


@pytest.fixture(scope="module")
def asgi_server(django_db_setup, tmp_path_factory):
    """``gunicorn -k uvicorn_worker.UvicornWorker perfgate_site.asgi``, one worker, DEBUG on (the
    admin's cookies over plain HTTP, static files served as in development)."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("asgi") / "server.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "uvicorn_worker.UvicornWorker",
            "--workers",
            "1",
            "--bind",
            f"127.0.0.1:{port}",
            "perfgate_site.asgi",
        ],
        cwd=ROOT,
        env=worker_environment(
            DEBUG="true", PERFGATE_MAX_WAITERS_PER_TOKEN="100", PERFGATE_API_RATE="100000/min"
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up():
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{url}/healthz", timeout=5).ok

        wait_for(up, timeout=30, what="the ASGI server")
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


WAITERS = 60


async def long_polls_and_probes(url: str, token: str, builds: list[str], decide, server_pid: int) -> dict:
    """WAITERS long-polls spread over ``builds``; while they wait, /healthz probes and a count of
    the worker's threads; then ``decide`` (in a thread) and every long-poll's answer."""
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def long_poll(build_id: str):
            status_url = f"{url}/api/ci-cd/performance/status/{build_id}?environment=staging&wait=20"
            async with session.get(status_url, headers=headers) as response:
                return response.status, (await response.json())["status"], time.monotonic()

        polls = [asyncio.create_task(long_poll(builds[i % len(builds)])) for i in range(WAITERS)]
        await asyncio.sleep(2.0)
        pending_before_probes = sum(not poll.done() for poll in polls)
        probes = []
        for _ in range(10):
            started = time.monotonic()
            async with session.get(f"{url}/healthz") as response:
                probes.append((response.status, time.monotonic() - started))
        # Each waiter's thread ends once its request reached the wait; on a busy machine some may
        # still be on their way there, so look for up to 10 s (the waits last 20 s): a server that
        # keeps a thread per waiter never gets below the bound.
        deadline = time.monotonic() + 10
        while True:
            threads = max(threads_of(pid) for pid in worker_pids(server_pid))
            if threads < WAITERS // 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        pending_after_probes = sum(not poll.done() for poll in polls)
        await asyncio.to_thread(decide)
        decided_at = time.monotonic()
        answers = await asyncio.gather(*polls)
    return {
        "pending": (pending_before_probes, pending_after_probes),
        "probes": probes,
        "threads": threads,
        "answers": answers,
        "decided_at": decided_at,
    }


@pytest.mark.django_db(transaction=True)
def test_the_asgi_server_answers_healthz_at_once_while_sixty_long_polls_wait(
    asgi_server, project, staging, actor
):
    url, server_pid = asgi_server
    builds = [f"b-wait-{i}" for i in range(6)]
    validations = [queued(project, staging, actor, build) for build in builds]

    def decide():
        for validation in validations:
            validation_evaluate(validation=validation, results=make_results(), actor=actor)
        connection.close()

    seen = asyncio.run(long_polls_and_probes(url, make_token(project, "ci")[1], builds, decide, server_pid))

    assert seen["pending"] == (WAITERS, WAITERS)
    assert all(code == 200 for code, _ in seen["probes"])
    slowest_probe = max(seconds for _, seconds in seen["probes"])
    print(f"slowest /healthz with {WAITERS} long-polls waiting: {slowest_probe * 1000:.1f} ms")
    # A server that parks a long-poll in a thread takes until the waits end (20 s) to answer.
    assert slowest_probe < 2
    # ... and needs a thread per waiter.
    assert seen["threads"] < WAITERS // 2, f"{seen['threads']} threads in the worker"
    assert {(code, status) for code, status, _ in seen["answers"]} == {(200, "passed")}
    slowest_answer = max(at for _, _, at in seen["answers"]) - seen["decided_at"]
    print(f"all {WAITERS} waiters answered {slowest_answer * 1000:.0f} ms after the last verdict")


def test_the_admin_and_its_static_files_work_under_asgi(asgi_server, transactional_db):
    url, _ = asgi_server
    get_user_model().objects.create_superuser("asgi-admin", "asgi@example.invalid", "asgi-password")

    stylesheet = requests.get(f"{url}/static/admin/css/base.css", timeout=10)
    assert stylesheet.status_code == 200 and stylesheet.headers["Content-Type"].startswith("text/css")

    browser = requests.Session()
    login_page = browser.get(f"{url}/admin/login/", timeout=10)
    assert login_page.status_code == 200
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text).group(1)
    logged_in = browser.post(
        f"{url}/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": csrf, "username": "asgi-admin", "password": "asgi-password"},
        headers={"Referer": f"{url}/admin/login/"},
        timeout=10,
    )
    assert logged_in.status_code == 200 and logged_in.url == f"{url}/admin/"
    assert 'id="logout-form"' in logged_in.text
