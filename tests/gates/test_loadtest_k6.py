"""The k6 driver on its own: what k6 is given, and how it is stopped."""

import http.server
import json
import os
import threading
import time
from pathlib import Path

import pytest

from gates.loadtest.k6 import K6Spec, redacted, run_k6
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


SECRET = "s3cret-bypass-value"

EVERY_KIND_OF_REQUEST = """
import http from 'k6/http';
import { get as namedGet } from 'k6/http';

const BASE = __ENV.TARGET_URL;
const OTHER = __ENV.OTHER_URL;
const keptAtInit = http.get;  // a reference taken before any request

export default async function () {
  http.get(`${BASE}/get`);
  namedGet(`${BASE}/named-get`);
  keptAtInit(`${BASE}/kept-at-init`);
  const own = { 'X-Own': 'kept', 'X-Vercel-Protection-Bypass': 'the script' };
  http.post(`${BASE}/post`, '{}', { headers: own });
  http.put(`${BASE}/put`, 'x');
  http.patch(`${BASE}/patch`, 'x');
  http.del(`${BASE}/del`);
  http.head(`${BASE}/head`);
  http.options(`${BASE}/options`);
  http.request('POST', `${BASE}/request`, 'x');
  await http.asyncRequest('GET', `${BASE}/async`);
  http.get(http.url`${BASE}/tagged/${__VU}`);
  http.batch([
    ['GET', `${BASE}/batch-array`],
    `${BASE}/batch-string`,
    { method: 'POST', url: `${BASE}/batch-object`, body: 'x', params: { headers: { 'X-Own': 'kept' } } },
  ]);
  http.batch({ one: `${BASE}/batch-named`, two: ['DELETE', `${BASE}/batch-named-array`] });
  http.get(`${OTHER}/another-host`);
}

export function handleSummary(data) {
  return { 'env.json': JSON.stringify(__ENV) };
}
"""


def _recording_server():
    """A local HTTP server in a thread that answers every method with 200 and records
    (method, path, {lower-case header name: [its values]}) of each request."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        disable_nagle_algorithm = True
        protocol_version = "HTTP/1.1"

        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            headers = {}
            for name, value in self.headers.items():
                headers.setdefault(name.lower(), []).append(value)
            seen.append((self.command, self.path, headers))
            self.send_response(200)
            self.send_header("Content-Length", "0" if self.command == "HEAD" else "2")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(b"ok")

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture
def recorded():
    """Two recording servers: the target, and another host the script also calls."""
    target, target_seen = _recording_server()
    other, other_seen = _recording_server()
    yield target, target_seen, other, other_seen
    for server in (target, other):
        server.shutdown()
        server.server_close()


def _k6_command_lines(workdir) -> list[str]:
    """The command lines of the processes running in ``workdir`` (k6, while it runs)."""
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if str(workdir) in text:
            lines.append(text)
    return lines


def test_extra_headers_reach_the_target_on_every_kind_of_k6_http_request_and_win_over_the_scripts(
    tmp_path, recorded
):
    target, target_seen, other, other_seen = recorded
    url = f"http://127.0.0.1:{target.server_address[1]}"
    script = EVERY_KIND_OF_REQUEST.replace(
        "__ENV.OTHER_URL", json.dumps(f"http://127.0.0.1:{other.server_address[1]}")
    )
    spec = K6Spec(script, url, vus=2, duration_seconds=1, headers={"x-vercel-protection-bypass": SECRET})
    outcome = run_k6(spec, tmp_path, timeout_seconds=60)

    assert outcome.completed, outcome.stderr_tail
    paths = {path.split("/")[1] for _, path, _ in target_seen}
    assert paths >= {
        "get", "named-get", "kept-at-init", "post", "put", "patch", "del", "head", "options", "request",
        "async", "tagged", "batch-array", "batch-string", "batch-object", "batch-named", "batch-named-array",
    }  # fmt: skip
    missing = [(method, path) for method, path, headers in target_seen
               if headers.get("x-vercel-protection-bypass") != [SECRET]]  # fmt: skip
    assert missing == [], "every request to the target carries the header, ours over the script's"
    kept = [h.get("x-own") for _, path, h in target_seen if path in ("/post", "/batch-object")]
    assert kept and all(values == ["kept"] for values in kept), "the script's other headers are kept"
    assert other_seen and all("x-vercel-protection-bypass" not in h for _, _, h in other_seen), (
        "another host the script calls never gets the secret"
    )


def test_header_values_are_on_neither_the_command_line_nor_in_any_file_nor_visible_to_the_script(
    tmp_path, recorded
):
    target, target_seen, other, _ = recorded
    url = f"http://127.0.0.1:{target.server_address[1]}"
    script = EVERY_KIND_OF_REQUEST.replace(
        "__ENV.OTHER_URL", json.dumps(f"http://127.0.0.1:{other.server_address[1]}")
    )
    spec = K6Spec(script, url, vus=1, duration_seconds=2, headers={"x-vercel-protection-bypass": SECRET})
    command_lines = []
    outcome = run_k6(
        spec,
        tmp_path,
        timeout_seconds=60,
        on_tick=lambda _: command_lines.extend(_k6_command_lines(tmp_path)),
    )

    assert outcome.completed and target_seen
    assert any("perfgate-main.js" in line for line in command_lines), "k6 was seen running"
    assert not any(SECRET in line for line in command_lines)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert {"perfgate-headers.js", "env.json", "raw.ndjson"} <= {path.name for path in files}
    assert [path.name for path in files if SECRET.encode() in path.read_bytes()] == []
    assert "PERFGATE_HEADERS" not in json.loads((tmp_path / "env.json").read_text()), (
        "the variable is gone before the script's own code runs"
    )
    assert SECRET not in repr(spec)


def test_without_extra_headers_the_wrapper_is_unchanged(tmp_path, quiet_target):
    outcome = run_k6(
        K6Spec(ENV_DUMP, quiet_target.url, vus=1, duration_seconds=1), tmp_path, timeout_seconds=60
    )
    assert outcome.completed
    assert not (tmp_path / "perfgate-headers.js").exists()
    assert "perfgate-headers" not in (tmp_path / "perfgate-main.js").read_text()


@pytest.mark.parametrize(
    ("name", "value"),
    [("x-bypass", "s3cret\r\nx-injected: 1"), ("x bypass", "s3cret"), ("x-bypass", "s3cret\0")],
)
def test_a_header_that_could_split_a_request_is_refused_without_showing_its_value(name, value):
    with pytest.raises(ValueError) as refused:
        K6Spec("", "http://127.0.0.1:1", vus=1, duration_seconds=1, headers={name: value})
    assert "s3cret" not in str(refused.value)


def test_header_values_are_cut_out_of_what_k6_printed():
    line = (
        'GoError: request to https://preview.example failed, headers {"x-vercel-protection-bypass":"s3cr3t"}'
    )
    shown = redacted(line, {"x-vercel-protection-bypass": "s3cr3t", "x-empty": ""})
    assert "s3cr3t" not in shown and "[redacted]" in shown
    assert redacted(line, {}) == line
