"""JMeter JTL (CSV) mapped onto k6's metric names, checked against numbers computed here from
the fixture with the standard library."""

from __future__ import annotations

import csv
import io
import statistics

import pytest

from gates.results import ParseError, parse_results
from gates.results.jmeter import parse_jtl
from gates.results.trend import TrendStore


@pytest.fixture(scope="module")
def rows(results_fixtures) -> list[dict]:
    with open(results_fixtures / "jmeter.jtl", newline="") as file:
        return list(csv.DictReader(file))


def expected_trend(elapsed: list[float]) -> dict[str, float]:
    # statistics.quantiles' "inclusive" method is the same linear interpolation k6 uses.
    cuts = statistics.quantiles(elapsed, n=1000, method="inclusive")
    return {
        "avg": statistics.fmean(elapsed),
        "min": min(elapsed),
        "med": statistics.median(elapsed),
        "max": max(elapsed),
        "p(90)": cuts[899],
        "p(95)": cuts[949],
        "p(99)": cuts[989],
        "p(99.9)": cuts[998],
        "count": len(elapsed),
    }


def assert_trend(values: dict[str, float], expected: dict[str, float]) -> None:
    assert values.keys() == expected.keys()
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, rel=1e-12), key


def test_fixture_has_the_shapes_the_parser_must_handle(rows):
    assert len(rows) >= 40
    assert {row["label"] for row in rows} == {"guests", "rsvp", "photos"}
    assert any(row["success"] == "false" for row in rows)
    assert any("," in row["failureMessage"] and "\n" not in row["failureMessage"] for row in rows)
    assert any("\n" in row["failureMessage"] for row in rows)


def test_jtl_maps_to_http_metrics_overall_and_per_label(results_fixtures, rows):
    result = parse_results(results_fixtures / "jmeter.jtl", percentiles=[99.9])
    assert result.format == "jmeter-jtl" and result.tool == "jmeter"
    start = min(int(row["timeStamp"]) for row in rows)
    end = max(int(row["timeStamp"]) + int(row["elapsed"]) for row in rows)
    assert result.duration_seconds == (end - start) / 1000

    for label in (None, "guests", "rsvp", "photos"):
        selected = [row for row in rows if label is None or row["label"] == label]
        tags = (("name", label),) if label else ()
        elapsed = [float(row["elapsed"]) for row in selected]
        failures = sum(row["success"] == "false" for row in selected)
        duration = result.find("http_req_duration", tags)
        assert duration.samples == len(selected) and duration.unit == "ms"
        assert_trend(duration.values, expected_trend(elapsed))
        assert result.find("http_reqs", tags).values == {
            "count": len(selected),
            "rate": len(selected) / ((end - start) / 1000),
        }
        assert result.find("http_req_failed", tags).values == {
            "rate": failures / len(selected),
            "passes": failures,
            "fails": len(selected) - failures,
        }

    assert result.series["data_received"].values["count"] == sum(int(row["bytes"]) for row in rows)
    assert result.series["data_sent"].values["count"] == sum(int(row["sentBytes"]) for row in rows)
    assert result.series["data_received"].unit == "bytes"


def test_jtl_columns_may_be_reordered_or_missing_except_the_required_ones(results_fixtures, rows):
    kept = ["success", "label", "responseCode", "elapsed", "timeStamp", "URL"]
    reordered = io.StringIO()
    writer = csv.DictWriter(reordered, fieldnames=kept, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    original = parse_results(results_fixtures / "jmeter.jtl")
    narrow = parse_results(io.BytesIO(reordered.getvalue().encode()))
    assert narrow.format == "jmeter-jtl"
    for key in (
        "http_req_duration",
        "http_req_duration{name:rsvp}",
        "http_reqs",
        "http_req_failed{name:photos}",
    ):
        assert narrow.series[key].values == original.series[key].values
    assert "data_received" not in narrow.series


def test_jtl_submetrics_can_filter_on_response_code(results_fixtures, rows):
    result = parse_results(
        results_fixtures / "jmeter.jtl",
        submetrics=[
            "http_req_duration{name:rsvp,status:503}",
            "http_reqs{status:201}",
            "http_req_duration{name:checkout}",
        ],
    )
    rsvp_503 = [float(r["elapsed"]) for r in rows if r["label"] == "rsvp" and r["responseCode"] == "503"]
    assert len(rsvp_503) == 2
    assert result.series["http_req_duration{name:rsvp,status:503}"].values["max"] == max(rsvp_503)
    created = sum(r["responseCode"] == "201" for r in rows)
    assert result.series["http_reqs{status:201}"].values["count"] == created
    # A label that never ran: present, with zero samples, so a rule on it reports missing data.
    assert result.series["http_req_duration{name:checkout}"].samples == 0


def test_jtl_spilled_trends_equal_in_memory_ones(results_fixtures):
    in_memory = parse_results(results_fixtures / "jmeter.jtl")
    with TrendStore(budget=8, run_values=4) as store, open(results_fixtures / "jmeter.jtl", "rb") as stream:
        spilled = parse_jtl(stream, store=store)
        assert store.spilled_runs > 0 and store.peak_held <= 8
    assert spilled.series.keys() == in_memory.series.keys()
    for key, series in in_memory.series.items():
        assert spilled.series[key].values == series.values, key


def test_jtl_with_a_date_timestamp_format_is_an_error_that_says_so():
    data = b"timeStamp,elapsed,label,success\n2026/11/24 10:00:00.123,12,guests,true\n"
    with pytest.raises(ParseError) as error:
        parse_results(io.BytesIO(data), name="results.jtl")
    assert str(error.value) == (
        "results.jtl: line 2: field 'timeStamp': expected milliseconds since "
        "the epoch (timestamp_format=ms), got '2026/11/24 10:00:00.123'"
    )


def test_jtl_row_with_a_bad_success_flag_names_its_line():
    data = b"timeStamp,elapsed,label,success\n1795516249146,13,guests,true\n1795516249150,14,guests,maybe\n"
    with pytest.raises(ParseError) as error:
        parse_results(io.BytesIO(data), name="results.jtl")
    assert str(error.value) == "results.jtl: line 3: field 'success': expected true or false, got 'maybe'"
