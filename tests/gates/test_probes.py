"""Production probes with the real k6 against the local sample target: a short, capped load,
judged like a history-mode validation against a probe baseline; anything that keeps a probe from
measuring is an error, never a failure."""

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from gates.loadtest.sample_target import SampleHandler, SampleServer, start_in_thread
from gates.probes import ERROR, FAILURE, SUCCESS, baseline_from, probe_limits, probe_load, run_probe
from gates.results import parse_results

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

# Well above the noise of a loaded host (see tests/gates/test_execution.py): a 2x slowdown is
# 50 -> 100 ms, and a healthy probe does not drift by the 25% that fails.
GOOD_LATENCY_MS = 50.0
P95 = "http_req_duration|p(95)"
SECRET = "s3cret-probe-bypass"


@pytest.fixture
def target():
    server = start_in_thread(latency_ms=GOOD_LATENCY_MS, jitter_ms=1.0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def probe(scenario, target):
    """The project's scenario as a gentle probe: 2 VUs for 2 s against the local target."""
    scenario.target_url = target.url
    scenario.vus = 2
    scenario.duration_seconds = 2
    scenario.min_requests = 20
    scenario.save()
    return scenario


@pytest.fixture
def relative_p95(add_rule):
    return add_rule("http_req_duration", aggregation="p(95)", warn_pct=10, fail_pct=25, floor=5)


@pytest.fixture
def workdirs(tmp_path):
    """A fresh private directory per probe."""
    counter = iter(range(1000))

    def make() -> Path:
        path = tmp_path / f"probe-{next(counter)}"
        path.mkdir()
        return path

    return make


def probe_once(scenario, environment, workdirs, *, target_url=None, baseline=None, **kwargs):
    return run_probe(
        scenario=scenario,
        environment=environment,
        target_url=target_url or scenario.target_url,
        allowed_hosts=scenario.project.allowed_hosts,
        workdir=workdirs(),
        baseline=baseline,
        **kwargs,
    )


def check(result, kind):
    return next(c for c in result.report["checks"] if c["kind"] == kind)


def test_a_healthy_probe_passes_against_three_earlier_probes_and_a_target_2x_slower_fails(
    probe, production, target, relative_p95, workdirs
):
    earlier = [probe_once(probe, production, workdirs) for _ in range(3)]
    assert [r.outcome for r in earlier] == [SUCCESS] * 3, [r.reason for r in earlier]
    baseline = baseline_from([r.values for r in earlier])
    assert len(baseline[P95].run_values) == 3

    healthy = probe_once(probe, production, workdirs, baseline=baseline)
    assert healthy.outcome == SUCCESS, healthy.reason
    assert check(healthy, "relative")["verdict"] in ("pass", "warn")
    assert check(healthy, "relative")["baseline"] == pytest.approx(baseline[P95].value)

    target.knobs.latency_ms = 2 * GOOD_LATENCY_MS
    slow = probe_once(probe, production, workdirs, baseline=baseline)
    assert slow.outcome == FAILURE and slow.verdict == "fail"
    assert check(slow, "relative")["verdict"] == "fail"
    assert "http_req_duration p(95)" in slow.reason and "above baseline" in slow.reason, slow.reason
    assert "(fail above +25%)" in slow.reason
    assert slow.values[P95] > 1.5 * baseline[P95].value


def test_a_breached_absolute_rule_fails_the_probe_even_without_a_baseline(
    probe, production, add_rule, relative_p95, workdirs
):
    add_rule("http_req_duration", threshold="p(95)<10")
    result = probe_once(probe, production, workdirs)
    assert result.outcome == FAILURE, result.reason
    assert "is above the limit 10 ms" in result.reason
    assert check(result, "relative")["verdict"] == "no_baseline"


def test_without_a_baseline_a_probe_succeeds_with_a_no_baseline_check_and_absolute_rules_decide(
    probe, production, add_rule, relative_p95, workdirs
):
    add_rule("http_req_duration", threshold="p(95)<2000")
    result = probe_once(probe, production, workdirs)
    assert result.outcome == SUCCESS and result.verdict == "warn", result.reason
    assert check(result, "relative")["verdict"] == "no_baseline"
    assert check(result, "absolute")["verdict"] == "pass"
    assert check(result, "load")["verdict"] == "pass"
    assert result.report["notices"] and "No probe baseline yet" in result.report["notices"][0]
    assert result.values[P95] > GOOD_LATENCY_MS


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_target_is_an_error_not_a_failure(probe, production, relative_p95, workdirs):
    port = _closed_port()
    result = probe_once(
        probe,
        production,
        workdirs,
        target_url=f"http://127.0.0.1:{port}",
        extra_hosts=[f"127.0.0.1:{port}"],
        baseline=baseline_from([{P95: 50.0}] * 3),
    )
    assert result.outcome == ERROR and result.verdict == ""
    assert "unreachable" in result.reason and str(port) in result.reason
    assert result.report == {} and result.values == {}


def test_a_host_off_the_allowlist_is_an_error_and_is_never_loaded(
    probe, production, target, workdirs, tmp_path
):
    # localhost is loopback like 127.0.0.1, but the allowlist names only 127.0.0.1.
    url = f"http://localhost:{target.server_address[1]}"
    result = probe_once(probe, production, workdirs, target_url=url)
    assert result.outcome == ERROR
    assert result.reason.startswith("Target refused:"), result.reason
    assert not any(tmp_path.rglob("raw.ndjson")), "k6 never ran"


def test_a_probe_is_capped_however_heavy_its_scenario(probe, production, settings, workdirs, tmp_path):
    settings.PERFGATE_PROBE_MAX_VUS = 2
    settings.PERFGATE_PROBE_MAX_SECONDS = 2
    probe.vus, probe.duration_seconds, probe.min_requests = 50, 300, 100
    probe.save()
    assert probe_limits(probe) == (2, 2)

    result = probe_once(probe, production, workdirs)
    assert result.outcome == SUCCESS, result.reason
    assert result.duration_seconds < 30, "2 s of load, not 300"
    # A probe needs its share of the scenario's minimum, but never fewer than 20 requests.
    assert check(result, "load")["limit"] == 20
    (raw_path,) = tmp_path.rglob("raw.ndjson")
    vus = []
    with open(raw_path, "rb") as raw:
        for line in raw:
            point = json.loads(line)
            if point["type"] == "Point" and point["metric"] in ("vus", "vus_max"):
                vus.append(point["data"]["value"])
    assert vus and max(vus) == 2, "k6 ran 2 VUs, not 50"
    results = parse_results(raw_path)
    assert results.duration_seconds <= 3.0


def test_an_open_model_probe_keeps_its_pace_per_vu_and_never_starts_more_vus(scenario, settings):
    settings.PERFGATE_PROBE_MAX_VUS = 5
    scenario.arrival_rate, scenario.vus, scenario.max_vus = 200, 50, 100
    scenario.duration_seconds, scenario.min_requests = 60, 1000
    load = probe_load(scenario)
    assert (load.vus, load.max_vus, load.arrival_rate) == (5, 5, 20)
    # 20/s for 30 s is 600 of the scenario's 12,000 iterations: a twentieth of its minimum, or 20.
    assert load.duration_seconds == 30 and load.min_requests == 50


def test_extra_headers_reach_the_target_and_the_secret_is_on_no_command_line_and_in_no_file(
    probe, production, workdirs, tmp_path
):
    seen = []

    class Recording(SampleHandler):
        def do_GET(self):
            seen.append(self.headers.get_all("x-vercel-protection-bypass"))
            super().do_GET()

    server = SampleServer(("127.0.0.1", 0))
    server.RequestHandlerClass = Recording
    threading.Thread(target=server.serve_forever, daemon=True).start()
    command_lines = []

    def should_stop():
        # Asked about twice a second while k6 runs: a look at what every process was started with.
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if "perfgate-main.js" in text and str(tmp_path) in text:
                command_lines.append(text)
        return False

    try:
        result = probe_once(
            probe,
            production,
            workdirs,
            target_url=server.url,
            extra_hosts=[f"127.0.0.1:{server.server_address[1]}"],  # as a deployment's own URL is
            headers={"x-vercel-protection-bypass": SECRET},
            should_stop=should_stop,
        )
    finally:
        server.shutdown()
        server.server_close()

    assert result.outcome == SUCCESS, result.reason
    assert seen and all(values == [SECRET] for values in seen)
    assert command_lines and not any(SECRET in line for line in command_lines)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "raw.ndjson" for path in files)
    assert [path.name for path in files if SECRET.encode() in path.read_bytes()] == []
    assert SECRET not in repr(result)


def test_a_stop_ends_the_probe_as_an_error(probe, production, workdirs):
    probe.duration_seconds = 30
    probe.save()
    asked = time.monotonic()
    result = probe_once(probe, production, workdirs, should_stop=lambda: time.monotonic() - asked > 1)
    assert (result.outcome, result.reason) == (ERROR, "stopped")
    assert result.duration_seconds < 15

    before = probe_once(probe, production, workdirs, should_stop=lambda: True)
    assert (before.outcome, before.reason) == (ERROR, "stopped")


def test_too_few_requests_is_an_error_even_when_a_rule_would_fail(probe, production, add_rule, workdirs):
    add_rule("http_req_duration", threshold="p(95)<10")  # fails, but on too few requests to trust
    probe.min_requests = 100_000
    probe.save()
    result = probe_once(probe, production, workdirs)
    assert result.outcome == ERROR and result.verdict == "fail"
    assert result.reason.startswith("http_reqs insufficient load:"), result.reason
    assert check(result, "absolute")["verdict"] == "fail", "the checks are reported as they came out"
