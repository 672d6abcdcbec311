"""Inputs that used to answer 500 (issue 12, item 6), sent through the real HTTP path: each is
refused with a 4xx in the one error shape and leaves no row behind, and the right request made
afterwards gets its right answer, once: nothing lost, nothing duplicated.

Deep nesting failed everywhere (RecursionError); the NUL bytes and over-long names failed on
PostgreSQL, which refuses them in text and JSONB and enforces column lengths, while SQLite stored
them. CI runs this file on both.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import sys
import time
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from gates.models import AuditEvent, CheckResult, IdempotencyKey, MetricObservation, Run, Validation
from integrations.models import WebhookDelivery
from tests.conftest import Api
from tests.integrations.conftest import WEBHOOK_SECRET, fixture_payload, send_webhook
from tests.qcluster import ROOT, worker_environment

VALIDATE = "/api/ci-cd/performance/validate"
HISTORY = "/api/ci-cd/performance/history"
SHA = "3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e"
# Just past the limit, past Python's recursion limit, and past orjson's own depth limit (1024).
DEPTHS = [65, 1_000, 20_000]
TABLES = (Validation, Run, MetricObservation, CheckResult, AuditEvent, IdempotencyKey, WebhookDelivery)


def row_counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in TABLES}


def assert_refused(response, status: int) -> dict:
    """A 4xx in the one error shape, as JSON."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail", "fields"}, body
    assert body["error"] and body["detail"]
    return body


def nested(depth: int) -> str:
    """JSON text of objects nested ``depth`` deep, written as text: encoding it would recurse."""
    return '{"a":' * depth + "1" + "}" * depth


def summary(*, p95: float = 200.0, count: float = 1000, metric: str = "http_req_duration") -> dict:
    """A k6 --summary-export document with the numbers a test varies."""
    return {
        "metrics": {
            metric: {"avg": 150.0, "min": 50.0, "med": 140.0, "max": 400.0, "p(90)": 180.0, "p(95)": p95},
            "http_reqs": {"count": count, "rate": 100.0},
            "http_req_failed": {"passes": 0, "fails": 1000, "value": 0.0},
        },
        "state": {"testRunDurationMs": 10_000},
    }


def request_document(build_id: str, **overrides) -> dict:
    document = {"project": "wedsync-web", "buildId": build_id, "environment": "staging", "gitHash": SHA}
    document.update(overrides)
    return document


def post_raw(api: Api, path: str, text: str):
    return api.client.post(path, data=text.encode(), content_type="application/json")


def assert_validated_once(ci_api: Api, build_id: str, **overrides) -> None:
    """The request made right: accepted, and one validation for the build, however often asked."""
    for _ in range(2):
        response = ci_api.post(VALIDATE, request_document(build_id, results=summary(), **overrides))
        assert response.status_code == 200, response.content[:500]
        assert response.json()["status"] == "passed"
    assert Validation.objects.filter(build_id=build_id).count() == 1


@pytest.mark.parametrize("depth", DEPTHS)
def test_deeply_nested_results_are_refused_and_leave_nothing(ci_api, depth):
    before = row_counts()
    head = json.dumps(request_document("deep-results"))[:-1]
    response = post_raw(ci_api, VALIDATE, f'{head}, "results": {{"metrics": {nested(depth)}}}}}')
    body = assert_refused(response, 400)
    assert "depth limit exceeded" in body["detail"]
    assert row_counts() == before
    assert_validated_once(ci_api, "deep-results")


@pytest.mark.parametrize("depth", DEPTHS)
def test_a_deeply_nested_deployment_context_is_refused_and_leaves_nothing(ci_api, depth):
    before = row_counts()
    head = json.dumps(request_document("deep-context", results=summary()))[:-1]
    response = post_raw(ci_api, VALIDATE, f'{head}, "deploymentContext": {{"actor": {nested(depth)}}}}}')
    body = assert_refused(response, 400)
    assert "depth limit exceeded" in body["detail"]
    assert row_counts() == before
    assert_validated_once(ci_api, "deep-context", deploymentContext={"actor": "octocat"})


@pytest.mark.parametrize("depth", DEPTHS)
def test_a_deeply_nested_multipart_request_part_is_refused_and_leaves_nothing(ci_api, depth):
    before = row_counts()
    head = json.dumps(request_document("deep-multipart"))[:-1]
    response = ci_api.client.post(
        VALIDATE,
        {
            "request": f'{head}, "testConfig": {nested(depth)}}}',
            "results": SimpleUploadedFile("summary.json", json.dumps(summary()).encode()),
        },
        format="multipart",
    )
    body = assert_refused(response, 400)
    assert "depth limit exceeded" in body["detail"]
    assert row_counts() == before
    assert_validated_once(ci_api, "deep-multipart")


@pytest.mark.parametrize(
    ("numbers", "field"),
    [({"p95": 1e308}, "p(95)"), ({"count": 1e308}, "count")],
    ids=["p95", "count"],
)
def test_a_number_no_load_test_produces_is_refused_and_leaves_nothing(ci_api, numbers, field):
    before = row_counts()
    response = ci_api.post(VALIDATE, request_document("huge-number", results=summary(**numbers)))
    body = assert_refused(response, 400)
    assert field in body["detail"]
    assert row_counts() == before
    assert_validated_once(ci_api, "huge-number")


@pytest.mark.parametrize(
    "metric",
    ["http_req\x00duration", "m" * 301, "http_req_duration{name:" + "x" * 300 + "}"],
    ids=["nul", "301-characters", "long-tag"],
)
def test_a_metric_name_that_cannot_be_stored_is_refused_and_leaves_nothing(ci_api, metric):
    before = row_counts()
    response = ci_api.post(VALIDATE, request_document("bad-metric", results=summary(metric=metric)))
    body = assert_refused(response, 400)
    assert "metric name" in body["detail"]
    assert row_counts() == before
    assert_validated_once(ci_api, "bad-metric")


def test_a_nul_in_a_build_id_of_the_path_is_not_found(ci_api):
    ci_api.post(VALIDATE, request_document("abcdef", results=summary()))
    before = row_counts()
    assert_refused(ci_api.get("/api/ci-cd/performance/status/abc%00def"), 404)
    assert row_counts() == before
    response = ci_api.get("/api/ci-cd/performance/status/abcdef")
    assert (response.status_code, response.json()["status"]) == (200, "passed")


def test_a_history_cursor_whose_id_is_not_a_uuid_is_refused(ci_api):
    for number in range(3):
        ci_api.post(VALIDATE, request_document(f"page-{number}", results=summary()))
    first = ci_api.get(HISTORY, {"limit": 2})
    assert first.status_code == 200
    created_at, _ = base64.urlsafe_b64decode(_cursor_of(first.json()["next"]) + "==").decode().split("|")
    forged = base64.urlsafe_b64encode(f"{created_at}|not-a-uuid".encode()).decode().rstrip("=")
    body = assert_refused(ci_api.get(HISTORY, {"limit": 2, "cursor": forged}), 400)
    assert body["fields"] == {"cursor": ["Invalid cursor."]}
    second = ci_api.get(HISTORY, {"limit": 2, "cursor": _cursor_of(first.json()["next"])})
    shown = [item["buildId"] for item in first.json()["results"] + second.json()["results"]]
    assert sorted(shown) == ["page-0", "page-1", "page-2"]


def _cursor_of(next_url: str) -> str:
    return next_url.split("cursor=")[1].split("&")[0]


def test_a_nul_as_the_charts_metric_is_refused(ci_api):
    ci_api.post(VALIDATE, request_document("charted", results=summary()))
    validation = Validation.objects.get(build_id="charted")
    url = f"/charts/validations/{validation.pk}.svg"
    body = assert_refused(ci_api.client.get(url, {"metric": "\x00"}), 400)
    assert body["fields"] == {"metric": ["Null characters are not allowed."]}
    response = ci_api.client.get(url, {"metric": "http_req_duration"})
    assert (response.status_code, response["Content-Type"]) == (200, "image/svg+xml")
    assert b"charted" in response.content


@pytest.fixture
def _webhook_secret(settings):
    settings.GITHUB_WEBHOOK_SECRET = WEBHOOK_SECRET


def ping_text(zen: str) -> str:
    """GitHub's example ping, its ``zen`` replaced by raw JSON text."""
    payload = fixture_payload("ping.payload.json")
    payload["zen"] = "ZEN"
    return json.dumps(payload).replace('"ZEN"', zen)


@pytest.mark.usefixtures("_webhook_secret")
@pytest.mark.parametrize(
    ("zen", "expected"),
    [
        (nested(65), "depth limit exceeded"),
        (nested(1_000), "depth limit exceeded"),
        (nested(20_000), "depth limit exceeded"),
        ('"Design for failure.\\u0000"', "NUL"),
        ("NaN", "not valid JSON"),
    ],
    ids=["nested-65", "nested-1000", "nested-20000", "nul", "nan"],
)
def test_a_signed_webhook_body_that_cannot_be_stored_is_refused_and_leaves_nothing(client, db, zen, expected):
    delivery = str(uuid.uuid4())
    before = row_counts()
    response = send_webhook(client, "ping", ping_text(zen).encode(), delivery=delivery)
    body = assert_refused(response, 400)
    assert expected in body["detail"]
    assert row_counts() == before
    # GitHub redelivers with the same id: the refusal did not take it.
    for expected_state in ("ignored", "duplicate"):
        response = send_webhook(
            client, "ping", ping_text('"Design for failure."').encode(), delivery=delivery
        )
        assert (response.status_code, response.json()["status"]) == (202, expected_state)
    assert WebhookDelivery.objects.filter(delivery_id=delivery).count() == 1


# The request head (request line and headers) uvicorn's HTTP parser buffers at most: a longer
# one it answers itself, before perfgate sees it.
UVICORN_HEAD_LIMIT = 65536


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server_port():
    """perfgate served as the README deploys it: gunicorn with uvicorn workers."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker"]
    command += ["--bind", f"127.0.0.1:{port}", "--log-level", "error"]
    server = subprocess.Popen([*command, "perfgate_site.asgi"], cwd=ROOT, env=worker_environment())
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def request_line_answer(port: int, length: int) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET whose request line is ``length`` bytes long."""
    fixed = len("GET /api/ci-cd/performance/history?cursor= HTTP/1.1")
    line = f"GET /api/ci-cd/performance/history?cursor={'c' * (length - fixed)} HTTP/1.1"
    assert len(line) == length
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"{line}\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := connection.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *headers = head.decode("latin-1").split("\r\n")
    content_type = next(
        (h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("content-type:")), ""
    )
    return int(status_line.split()[1]), content_type, body


@pytest.mark.parametrize("length", [4095, 16 * 1024, UVICORN_HEAD_LIMIT - 200])
def test_long_request_lines_reach_perfgate_and_get_its_json_answer(server_port, length):
    # gunicorn's own workers answered lines over 4094 bytes with an HTML 400; uvicorn's pass
    # them on, and perfgate answers in the error shape.
    status, content_type, body = request_line_answer(server_port, length)
    assert (status, content_type) == (401, "application/json")
    assert set(json.loads(body)) == {"error", "detail", "fields"}


def test_a_request_head_beyond_uvicorns_buffer_is_refused_by_the_server(server_port):
    # The proxy in front must refuse such requests first (docs/architecture.md, "Input limits").
    status, _, body = request_line_answer(server_port, UVICORN_HEAD_LIMIT + 1000)
    assert status == 400
    assert b"Invalid HTTP request" in body
