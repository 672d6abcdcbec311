"""Locust CSV and JSON mapped onto k6's metric names, checked against numbers computed here from
the same files (committed real outputs, and a live Locust run when Locust is installed)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from gates.results import ParseError, parse_results


def locust_percentile(histogram: dict[str, int], count: int, fraction: float) -> float:
    """The value at rank int(count * fraction) of the sorted (bucketed) response times."""
    ordered = sorted(float(bucket) for bucket, times in histogram.items() for _ in range(times))
    return ordered[min(int(count * fraction), count - 1)]


def check_csv_mapping(path) -> None:
    result = parse_results(path)
    assert result.format == "locust-csv" and result.tool == "locust"
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows[-1]["Name"] == "Aggregated"
    for row in rows:
        tags = () if row["Name"] == "Aggregated" else (("method", row["Type"]), ("name", row["Name"]))
        requests, failures = int(row["Request Count"]), int(row["Failure Count"])
        duration = result.find("http_req_duration", tags)
        assert duration.samples == requests
        assert duration.values["med"] == float(row["Median Response Time"])
        assert duration.values["avg"] == float(row["Average Response Time"])
        assert duration.values["min"] == float(row["Min Response Time"])
        assert duration.values["max"] == float(row["Max Response Time"])
        for percent, key in (("90%", "p(90)"), ("95%", "p(95)"), ("99%", "p(99)"), ("99.9%", "p(99.9)")):
            assert duration.values[key] == float(row[percent])
        assert result.find("http_reqs", tags).values == {"count": requests, "rate": float(row["Requests/s"])}
        failed = result.find("http_req_failed", tags)
        assert failed.values == {
            "rate": failures / requests,
            "passes": failures,
            "fails": requests - failures,
        }
    aggregated = rows[-1]
    assert result.duration_seconds == int(aggregated["Request Count"]) / float(aggregated["Requests/s"])


def check_json_mapping(path) -> None:
    result = parse_results(path, submetrics=["http_req_duration{name:guests}"], percentiles=[99.9])
    assert result.format == "locust-json" and result.tool == "locust"
    with open(path) as file:
        entries = json.load(file)
    assert entries
    merged_histogram: dict[str, int] = {}
    for entry in entries:
        for bucket, times in entry["response_times"].items():
            merged_histogram[bucket] = merged_histogram.get(bucket, 0) + times
    total = {
        "num_requests": sum(e["num_requests"] for e in entries),
        "num_failures": sum(e["num_failures"] for e in entries),
        "total_response_time": sum(e["total_response_time"] for e in entries),
        "min_response_time": min(e["min_response_time"] for e in entries),
        "max_response_time": max(e["max_response_time"] for e in entries),
        "response_times": merged_histogram,
    }
    start = min(e["start_time"] for e in entries)
    end = max(e["last_request_timestamp"] for e in entries)
    assert result.duration_seconds == end - start

    for entry, tags in [(total, ())] + [(e, (("method", e["method"]), ("name", e["name"]))) for e in entries]:
        count = entry["num_requests"]
        duration = result.series[
            "http_req_duration" + ("{" + ",".join(f"{k}:{v}" for k, v in tags) + "}" if tags else "")
        ]
        assert duration.samples == count
        assert duration.values["avg"] == pytest.approx(entry["total_response_time"] / count, rel=1e-12)
        assert duration.values["min"] == entry["min_response_time"]
        assert duration.values["max"] == entry["max_response_time"]
        median = locust_percentile(entry["response_times"], count, 0.5)
        clamped = min(max(median, entry["min_response_time"]), entry["max_response_time"])
        assert duration.values["med"] == clamped
        for key, fraction in (("p(90)", 0.9), ("p(95)", 0.95), ("p(99)", 0.99), ("p(99.9)", 0.999)):
            assert duration.values[key] == locust_percentile(entry["response_times"], count, fraction), key
        reqs = result.find("http_reqs", tags)
        assert reqs.values == {"count": count, "rate": count / (end - start)}
        failed = result.find("http_req_failed", tags)
        assert failed.values["rate"] == entry["num_failures"] / count
        assert failed.values["passes"] == entry["num_failures"]

    guests = [e for e in entries if e["name"] == "guests"]
    assert result.series["http_req_duration{name:guests}"].samples == sum(e["num_requests"] for e in guests)


def test_locust_csv_columns_map_to_k6_aggregations(results_fixtures):
    check_csv_mapping(results_fixtures / "locust_stats.csv")


def test_locust_json_percentiles_are_computed_from_the_histogram_as_locust_does(results_fixtures):
    check_json_mapping(results_fixtures / "locust.json")


def test_live_locust_run_maps_like_the_committed_samples(locust_outputs):
    stats_csv, stats_json = locust_outputs
    check_csv_mapping(stats_csv)
    check_json_mapping(stats_json)


def test_locust_csv_is_read_by_header_name_not_position(results_fixtures):
    with open(results_fixtures / "locust_stats.csv", newline="") as file:
        rows = list(csv.reader(file))
    order = list(reversed(range(len(rows[0]))))
    shuffled = io.StringIO()
    csv.writer(shuffled).writerows([[row[i] for i in order] for row in rows])
    original = parse_results(results_fixtures / "locust_stats.csv")
    reordered = parse_results(io.BytesIO(shuffled.getvalue().encode()), format="locust-csv")
    assert reordered.series.keys() == original.series.keys()
    for key, series in original.series.items():
        assert reordered.series[key].values == series.values, key


def test_locust_request_without_any_request_has_zero_samples_and_no_percentiles():
    data = (
        b"Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
        b"Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,95%,100%\n"
        b"GET,idle,0,0,0,0.0,0,0,0.0,0.0,0.0,N/A,N/A,N/A\n"
        b",Aggregated,0,0,0,0.0,0,0,0.0,0.0,0.0,N/A,N/A,N/A\n"
    )
    result = parse_results(io.BytesIO(data))
    assert result.series["http_req_duration"].samples == 0
    assert result.series["http_req_duration"].values == {"count": 0.0}
    assert "rate" not in result.series["http_req_failed"].values
    assert result.duration_seconds is None


def test_locust_csv_without_an_aggregated_row_is_an_error(results_fixtures):
    lines = (results_fixtures / "locust_stats.csv").read_bytes().splitlines(keepends=True)
    with pytest.raises(ParseError) as error:
        parse_results(io.BytesIO(b"".join(lines[:-1])), name="run_stats.csv")
    assert "run_stats.csv" in str(error.value) and "Aggregated" in str(error.value)


def test_locust_json_entry_with_a_wrong_field_names_its_path(results_fixtures):
    entries = json.loads((results_fixtures / "locust.json").read_text())
    entries[1]["num_requests"] = "many"
    with pytest.raises(ParseError) as error:
        parse_results(io.BytesIO(json.dumps(entries).encode()), name="locust.json")
    assert str(error.value) == (
        "locust.json: field '[1].num_requests': expected a whole, non-negative number, got 'many'"
    )
