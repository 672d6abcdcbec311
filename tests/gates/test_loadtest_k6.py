"""The k6 driver on its own: what k6 is given, and how it is stopped."""

import json
import os
import time

import pytest

from gates.loadtest.k6 import K6Spec, run_k6
from gates.results import parse_results

pytestmark = pytest.mark.slow

ENV_DUMP = """
import http from 'k6/http';
export const options = { vus: 50, duration: '1h' };
export default function () { http.get(`${__ENV.TARGET_URL}/api/guests`); }
export function handleSummary(data) {
  return { 'env.json': JSON.stringify(__ENV), 'options.json': JSON.stringify(data.options),
           'counts.json': JSON.stringify({ reqs: data.metrics.http_reqs.values.count,
                                           vus_max: data.metrics.vus_max.values.value }) };
}
"""


def test_k6_sees_a_clean_environment_and_the_scenarios_load_not_the_scripts(
    tmp_path, quiet_target, monkeypatch
):
    monkeypatch.setenv("SECRET_KEY", "must-not-leak")
    monkeypatch.setenv("PERFGATE_TOKEN", "pg_must-not-leak")
    outcome = run_k6(
        K6Spec(ENV_DUMP, quiet_target.url, vus=2, duration_seconds=2), tmp_path, timeout_seconds=60
    )

    assert outcome.completed and outcome.raw_path.stat().st_size > 0 and outcome.summary_path.exists()
    env = json.loads((tmp_path / "env.json").read_text())
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "TARGET_URL", "K6_NO_USAGE_REPORT", "K6_NO_COLOR"}
    assert env["TARGET_URL"] == quiet_target.url
    assert "must-not-leak" not in (tmp_path / "env.json").read_text()
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert counts["vus_max"] == 2  # the scenario's 2 VUs, not the script's 50
    assert "p(99)" in json.loads((tmp_path / "options.json").read_text())["summaryTrendStats"]
    assert outcome.elapsed_seconds < 30  # the scenario's 2 s, not the script's hour


def test_an_arrival_rate_scenario_sends_that_many_requests_per_second(tmp_path, quiet_target):
    spec = K6Spec(ENV_DUMP, quiet_target.url, vus=5, duration_seconds=3, arrival_rate=20, max_vus=10)
    outcome = run_k6(spec, tmp_path, timeout_seconds=60)
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert outcome.completed
    assert 50 <= counts["reqs"] <= 70  # 20/s for 3 s


def test_the_warm_up_runs_first_and_its_requests_are_left_out_of_the_numbers(tmp_path, quiet_target):
    spec = K6Spec(ENV_DUMP, quiet_target.url, vus=2, duration_seconds=2, warmup_seconds=2)
    outcome = run_k6(spec, tmp_path, timeout_seconds=60)
    assert outcome.completed
    all_requests = json.loads((tmp_path / "counts.json").read_text())["reqs"]  # k6's own: warm-up too
    results = parse_results(outcome.raw_path, warmup_tag=spec.warmup_tag)

    measured, warmup = results.request_count, results.warmup
    assert warmup is not None and warmup.excluded
    assert warmup.requests > 10 and measured > 10
    assert measured + warmup.requests == all_requests
    assert 0.5 <= warmup.seconds <= 2.5  # its samples: the ramp's first VU starts after 1 s
    assert 1.5 <= results.duration_seconds <= 3.0, "the measured part only"
    assert parse_results(outcome.raw_path).request_count == all_requests, "unchanged without the option"
    # The warm-up is over before the measured part starts.
    times = {"warmup": [], "measure": []}
    with open(outcome.raw_path, "rb") as raw:
        for line in raw:
            point = json.loads(line)
            if point["type"] == "Point" and point["metric"] == "http_reqs":
                # UTC, nanoseconds with trailing zeros trimmed: pad, so that text sorts as time.
                whole, _, fraction = point["data"]["time"].removesuffix("Z").partition(".")
                times[point["data"]["tags"]["scenario"]].append(f"{whole}.{fraction:0<9}")
    assert max(times["warmup"]) < min(times["measure"])


def test_the_target_host_is_pinned_to_the_checked_address(tmp_path, quiet_target):
    url = f"http://wedding.invalid:{quiet_target.server_address[1]}"  # .invalid never resolves
    spec = K6Spec(ENV_DUMP, url, vus=1, duration_seconds=1, hosts={"wedding.invalid": "127.0.0.1"})
    outcome = run_k6(spec, tmp_path, timeout_seconds=60)
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert outcome.completed and counts["reqs"] > 10
    assert b'"status":"200"' in outcome.raw_path.read_bytes()


def test_a_test_that_outlives_its_hard_timeout_is_stopped(tmp_path, quiet_target):
    started = time.monotonic()
    outcome = run_k6(
        K6Spec(ENV_DUMP, quiet_target.url, vus=1, duration_seconds=60), tmp_path, timeout_seconds=2
    )
    assert outcome.timed_out and not outcome.completed
    assert time.monotonic() - started < 15
    assert outcome.exit_code is not None  # the process is gone, not left running


def test_cancelling_stops_k6_at_the_next_tick(tmp_path, quiet_target):
    started = time.monotonic()
    outcome = run_k6(
        K6Spec(ENV_DUMP, quiet_target.url, vus=1, duration_seconds=60),
        tmp_path,
        timeout_seconds=120,
        should_cancel=lambda: time.monotonic() - started > 1.5,
    )
    assert outcome.cancelled and not outcome.completed
    assert time.monotonic() - started < 10
    assert os.path.exists(outcome.raw_path)


REDIRECTED = """
import http from 'k6/http';
export const options = { maxRedirects: 10 };
export default function () { http.get(`${__ENV.TARGET_URL}/`); }
"""


def _counting_server(handler_body):
    """A local HTTP server in a thread; each request is counted and answered by ``handler_body``."""
    import http.server
    import threading

    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            handler_body(self)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


def test_k6_does_not_follow_a_redirect_even_when_the_script_asks_it_to(tmp_path):
    def answer_ok(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"ok")

    elsewhere, elsewhere_hits = _counting_server(answer_ok)
    other_port = elsewhere.server_address[1]

    def answer_redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", f"http://127.0.0.1:{other_port}/internal")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    target, target_hits = _counting_server(answer_redirect)
    try:
        url = f"http://127.0.0.1:{target.server_address[1]}"
        outcome = run_k6(K6Spec(REDIRECTED, url, vus=1, duration_seconds=1), tmp_path, timeout_seconds=60)
    finally:
        for server in (target, elsewhere):
            server.shutdown()
            server.server_close()

    assert outcome.completed and len(target_hits) > 10
    assert elsewhere_hits == [], "the redirect's other port got no request"
    assert b'"status":"302"' in outcome.raw_path.read_bytes(), "the 3xx is an ordinary response"
