"""Bad input gives a ParseError that tells a CI log reader which file, where, and what was expected."""

from __future__ import annotations

import io
import json

import pytest

from gates.results import FORMATS, ParseError, parse_results


def error_for(data: bytes, fmt: str | None = None, name: str = "results.json") -> ParseError:
    with pytest.raises(ParseError) as error:
        parse_results(io.BytesIO(data), format=fmt, name=name)
    return error.value


@pytest.mark.parametrize("fmt", ["k6-summary-export", "k6-handle-summary"])
def test_truncated_summary_json_names_the_file_line_and_says_truncated(k6_outputs, fmt):
    path = k6_outputs.summary_export if fmt == "k6-summary-export" else k6_outputs.handle_summary
    data = path.read_bytes()
    error = error_for(data[: len(data) // 2], fmt)
    assert str(error).startswith("results.json: line ")
    assert "invalid JSON (the file looks truncated)" in str(error)
    assert error.line is not None and error.line >= 1


def test_truncated_locust_json_is_an_error(results_fixtures):
    data = (results_fixtures / "locust.json").read_bytes()
    error = error_for(data[:-40], name="locust.json")
    assert str(error).startswith("locust.json: line ") and "truncated" in str(error)


def test_non_number_in_summary_export_names_the_field_path(k6_outputs):
    document = json.loads(k6_outputs.summary_export.read_bytes())
    document["metrics"]["http_reqs"]["count"] = "abc"
    error = error_for(json.dumps(document).encode(), name="summary.json")
    assert str(error) == "summary.json: field 'metrics.http_reqs.count': expected a number, got 'abc'"
    assert error.field == "metrics.http_reqs.count"


def test_non_number_in_handle_summary_names_the_field_path(k6_outputs):
    document = json.loads(k6_outputs.handle_summary.read_bytes())
    document["metrics"]["http_req_duration{name:guests}"]["values"]["p(95)"] = [1]
    error = error_for(json.dumps(document).encode(), name="summary.json")
    assert str(error) == (
        "summary.json: field 'metrics.http_req_duration{name:guests}.values.p(95)': "
        "expected a number, got a list"
    )


def test_threshold_outcome_that_is_not_a_boolean_is_an_error(k6_outputs):
    document = json.loads(k6_outputs.summary_export.read_bytes())
    document["metrics"]["http_req_duration"]["thresholds"]["p(95)<2000"] = "no"
    error = error_for(json.dumps(document).encode())
    assert error.field == "metrics.http_req_duration.thresholds.p(95)<2000"
    assert "expected true or false, got 'no'" in str(error)


def test_summary_metric_of_unknown_kind_says_what_was_expected():
    error = error_for(b'{"metrics": {"my_thing": {"colour": 3}}}', "k6-summary-export")
    assert error.field == "metrics.my_thing"
    assert "cannot tell what kind of metric" in str(error) and "['colour']" in str(error)


def test_ndjson_line_that_is_not_json_names_file_and_line(k6_outputs):
    lines = k6_outputs.ndjson.read_bytes().splitlines(keepends=True)
    lines.insert(40, b"this is not json\n")
    error = error_for(b"".join(lines), name="points.ndjson")
    assert str(error).startswith("points.ndjson: line 41: expected a JSON object, got invalid JSON")


def test_ndjson_point_missing_its_data_names_the_field():
    line = b'{"type":"Metric","data":{"name":"x","type":"trend","contains":"time"},"metric":"x"}\n'
    error = error_for(line + b'{"type":"Point","metric":"x"}\n', "k6-ndjson", "points.ndjson")
    assert str(error) == "points.ndjson: line 2: field 'data': expected an object, got null"


@pytest.mark.parametrize(
    ("fmt", "header", "missing"),
    [
        ("jmeter-jtl", b"timeStamp,elapsed,label,responseCode\n1795516249146,13,guests,200\n", "'success'"),
        ("locust-csv", b"Type,Name,Request Count,Failure Count\nGET,guests,1,0\n", "'Median Response Time'"),
    ],
)
def test_csv_missing_a_required_column_names_it(fmt, header, missing):
    error = error_for(header, fmt, name="results.csv")
    assert str(error).startswith("results.csv: line 1: missing required column(s) ")
    assert missing in str(error)


def test_csv_row_with_a_non_number_names_line_and_column(results_fixtures):
    lines = (results_fixtures / "locust_stats.csv").read_text().splitlines(keepends=True)
    cells = lines[2].split(",")
    cells[5] = "fast"  # Average Response Time
    lines[2] = ",".join(cells)
    error = error_for("".join(lines).encode(), name="run_stats.csv")
    assert str(error) == "run_stats.csv: line 3: field 'Average Response Time': expected a number, got 'fast'"


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_file_is_an_error_for_every_format(fmt):
    error = error_for(b"", fmt, name="empty.out")
    assert str(error).startswith("empty.out: ")
    assert "empty" in str(error) or "no 'Aggregated' row" in str(error) or "missing" in str(error)


def test_empty_file_when_detecting_says_it_is_empty():
    error = error_for(b"  \n", name="empty.out")
    assert str(error).startswith("empty.out: the file is empty; expected one of: k6-summary-export")


@pytest.mark.parametrize("fmt", ["k6-ndjson", "jmeter-jtl", "locust-csv"])
def test_a_line_too_long_to_be_results_is_refused_without_reading_it_whole(fmt):
    header = {
        "k6-ndjson": b"",
        "jmeter-jtl": b"timeStamp,elapsed,label,success\n",
        "locust-csv": b"Type,Name,Request Count,Failure Count,Median Response Time,"
        b"Average Response Time,Min Response Time,Max Response Time,Requests/s\n",
    }[fmt]
    error = error_for(header + b"x" * (9 << 20), fmt, name="huge.out")
    assert str(error) == f"huge.out: line {2 if header else 1}: line longer than 8 MiB: not " + (
        "k6 NDJSON" if fmt == "k6-ndjson" else "a results file"
    )
