"""Numbers no load test can produce are refused by every parser, naming the metric, and an upload
that carries one is a 400 that writes nothing."""

from __future__ import annotations

import copy
import io
import json

import pytest

from gates.models import AuditEvent, Validation
from gates.results import ParseError, parse_results
from gates.results.common import MAX_MAGNITUDE

TOO_BIG_A_COUNT = MAX_MAGNITUDE + 2  # whole and exact as a float, but past 2**53

SUMMARY_EXPORT = {
    "metrics": {
        "http_req_duration": {
            "avg": 12.5,
            "min": 1.0,
            "med": 10.0,
            "max": 40.0,
            "p(90)": 20.0,
            "p(95)": 25.0,
        },
        "http_req_failed": {"passes": 1, "fails": 99, "value": 0.01},
        "http_reqs": {"count": 100, "rate": 33.3},
        "vus": {"value": 3, "min": 1, "max": 3},
    },
    "state": {"testRunDurationMs": 3000},
}

HANDLE_SUMMARY = {
    "metrics": {
        "http_req_duration": {
            "type": "trend",
            "contains": "time",
            "values": {"avg": 12.5, "min": 1.0, "med": 10.0, "max": 40.0, "p(90)": 20.0, "p(95)": 25.0},
        },
        "http_req_failed": {
            "type": "rate",
            "contains": "default",
            "values": {"rate": 0.01, "passes": 1, "fails": 99},
        },
        "http_reqs": {"type": "counter", "contains": "default", "values": {"count": 100, "rate": 33.3}},
    },
    "state": {"testRunDurationMs": 3000},
}


def parse(data: bytes, fmt: str | None = None):
    return parse_results(io.BytesIO(data), format=fmt, name="results.out")


def refusal(data: bytes, fmt: str | None = None) -> str:
    with pytest.raises(ParseError) as error:
        parse(data, fmt)
    message = str(error.value)
    assert message.startswith("results.out: ")
    return message


def changed(document: dict, path: str, value) -> bytes:
    document = copy.deepcopy(document)
    *parents, last = path.split("/")
    target = document
    for key in parents:
        target = target[key]
    target[last] = value
    return json.dumps(document).encode()


def test_the_plausible_samples_here_parse():
    for data in (json.dumps(SUMMARY_EXPORT).encode(), json.dumps(HANDLE_SUMMARY).encode()):
        assert parse(data).find("http_req_duration").values["p(95)"] == 25.0


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("metrics/http_req_duration/p(95)", -5.0, "http_req_duration p(95)"),
        ("metrics/http_req_duration/min", -0.5, "http_req_duration min"),
        ("metrics/http_req_duration/p(95)", 1e308, "http_req_duration p(95)"),
        ("metrics/http_req_duration/max", 1e17, "http_req_duration max"),
        ("metrics/http_req_failed/value", -0.01, "http_req_failed rate"),
        ("metrics/http_req_failed/value", 1.5, "http_req_failed rate"),
        ("metrics/http_reqs/count", -1, "http_reqs count"),
        ("metrics/http_reqs/count", TOO_BIG_A_COUNT, "http_reqs count"),
        ("metrics/http_reqs/rate", -3.0, "http_reqs rate"),
        ("metrics/vus/max", 1e300, "vus max"),
    ],
)
def test_a_k6_summary_export_with_an_impossible_value_is_refused_naming_the_metric(path, value, named):
    message = refusal(changed(SUMMARY_EXPORT, path, value))
    assert f"impossible value for {named}" in message


@pytest.mark.parametrize("spelling", ["NaN", "Infinity", "-Infinity"])
def test_a_k6_summary_export_with_a_non_finite_number_is_refused(spelling):
    data = json.dumps(SUMMARY_EXPORT).replace("25.0", spelling).encode()
    assert "invalid JSON" in refusal(data, "k6-summary-export")


def test_a_negative_test_duration_is_refused():
    assert "the test duration" in refusal(changed(SUMMARY_EXPORT, "state/testRunDurationMs", -3000))


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("metrics/http_req_duration/values/p(95)", -5.0, "http_req_duration p(95)"),
        ("metrics/http_req_duration/values/avg", 1e308, "http_req_duration avg"),
        ("metrics/http_req_failed/values/rate", -0.5, "http_req_failed rate"),
        ("metrics/http_req_failed/values/rate", 2.0, "http_req_failed rate"),
        ("metrics/http_reqs/values/count", -100, "http_reqs count"),
        ("metrics/http_reqs/values/count", TOO_BIG_A_COUNT, "http_reqs count"),
    ],
)
def test_a_k6_handle_summary_with_an_impossible_value_is_refused_naming_the_metric(path, value, named):
    message = refusal(changed(HANDLE_SUMMARY, path, value), "k6-handle-summary")
    assert f"impossible value for {named}" in message


def ndjson(points: list[tuple[str, float]]) -> bytes:
    lines = [
        {"type": "Metric", "metric": name, "data": {"name": name, "type": kind, "contains": contains}}
        for name, kind, contains in (
            ("http_req_duration", "trend", "time"),
            ("http_reqs", "counter", "default"),
        )
    ]
    for second, (metric, value) in enumerate(points):
        lines.append(
            {
                "type": "Point",
                "metric": metric,
                "data": {
                    "time": f"2026-12-01T10:00:{second:02d}Z",
                    "value": value,
                    "tags": {"name": "guests"},
                },
            }
        )
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_plausible_k6_ndjson_parses():
    result = parse(ndjson([("http_req_duration", 10.0), ("http_reqs", 1)]), "k6-ndjson")
    assert result.find("http_req_duration").values["max"] == 10.0


@pytest.mark.parametrize(
    ("points", "named"),
    [
        ([("http_req_duration", 10.0), ("http_req_duration", -4.0)], "http_req_duration"),
        # Each point is finite; their sum (and so the mean) is not.
        ([("http_req_duration", 1e308), ("http_req_duration", 1e308)], "http_req_duration"),
        ([("http_reqs", 1), ("http_reqs", -5)], "http_reqs"),
    ],
)
def test_k6_ndjson_with_an_impossible_value_is_refused_naming_the_metric(points, named):
    message = refusal(ndjson(points), "k6-ndjson")
    assert f"impossible value for {named}" in message


def test_k6_ndjson_with_a_nan_point_is_refused_at_its_line():
    data = ndjson([("http_req_duration", 10.0), ("http_req_duration", 11.0)]).replace(b"11.0", b"NaN")
    assert refusal(data, "k6-ndjson").startswith("results.out: line 4: ")


def locust_csv(results_fixtures, column: str, value: str, row: int = 1) -> bytes:
    lines = (results_fixtures / "locust_stats.csv").read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    cells = lines[row].rstrip("\n").split(",")
    cells[header.index(column)] = value
    lines[row] = ",".join(cells) + "\n"
    return "".join(lines).encode()


@pytest.mark.parametrize(
    ("column", "value", "named"),
    [
        (
            "Average Response Time",
            "-11.0",
            "impossible value for http_req_duration{method:GET,name:guests} avg",
        ),
        ("95%", "-13", "impossible value for http_req_duration{method:GET,name:guests} p(95)"),
        ("Max Response Time", "1e308", "impossible value for http_req_duration{method:GET,name:guests} max"),
        ("Requests/s", "-32.0", "impossible value for http_reqs{method:GET,name:guests} rate"),
        ("Failure Count", "65", "field 'Failure Count': more failures (65) than requests (64)"),
        (
            "Request Count",
            "9007199254740994",
            "impossible value for http_req_duration{method:GET,name:guests} samples",
        ),
    ],
)
def test_a_locust_csv_with_an_impossible_value_is_refused_naming_the_metric(
    results_fixtures, column, value, named
):
    assert named in refusal(locust_csv(results_fixtures, column, value), "locust-csv")


def test_a_locust_csv_with_infinity_is_refused_naming_the_column(results_fixtures):
    message = refusal(locust_csv(results_fixtures, "Average Response Time", "inf"), "locust-csv")
    assert "field 'Average Response Time': expected a number" in message


def locust_json(results_fixtures, key: str, value) -> bytes:
    entries = json.loads((results_fixtures / "locust.json").read_text())
    entries[0][key] = value
    return json.dumps(entries).encode()


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        # More failures than requests: a failure rate above 1.
        ("num_failures", 87, "impossible value for http_req_failed{method:GET,name:guests} rate"),
        ("num_requests", -86, "num_requests"),
        # Every recorded number is finite; the mean computed from them is not plausible.
        ("total_response_time", 1e308, "impossible value for http_req_duration avg"),
        ("min_response_time", -8.0, "impossible value for http_req_duration min"),
        ("response_times", {"1e308": 86}, "impossible value for http_req_duration p("),
    ],
)
def test_a_locust_json_with_an_impossible_value_is_refused_naming_the_metric(
    results_fixtures, key, value, named
):
    assert named in refusal(locust_json(results_fixtures, key, value), "locust-json")


def jmeter(results_fixtures, elapsed: str) -> bytes:
    lines = (results_fixtures / "jmeter.jtl").read_text().splitlines(keepends=True)
    cells = lines[2].split(",")
    cells[1] = elapsed
    lines[2] = ",".join(cells)
    return "".join(lines).encode()


@pytest.mark.parametrize("elapsed", ["-26", "1e308"])
def test_a_jmeter_jtl_with_an_impossible_elapsed_time_is_refused_naming_the_metric(results_fixtures, elapsed):
    message = refusal(jmeter(results_fixtures, elapsed), "jmeter-jtl")
    assert "impossible value for http_req_duration" in message, message


URL = "/api/ci-cd/performance/validate"


def test_an_upload_with_a_negative_p95_is_a_400_that_writes_nothing(ci_api, add_rule):
    add_rule("http_req_duration", threshold="p(95)<2000")
    results = json.loads(changed(SUMMARY_EXPORT, "metrics/http_req_duration/p(95)", -5.0))
    response = ci_api.post(
        URL,
        {
            "project": "wedsync-web",
            "buildId": "gha-9876543-1",
            "environment": "staging",
            "gitHash": "3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e",
            "results": results,
        },
    )
    assert response.status_code == 400, response.content
    data = response.json()
    assert set(data) == {"error", "detail", "fields"} and data["error"] == "invalid"
    assert "impossible value for http_req_duration p(95)" in data["fields"]["results"][0]
    assert not Validation.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="validation").exists()
