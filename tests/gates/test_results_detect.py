"""Format detection from content, and the public entry point's handling of streams and names."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gates.results import FORMATS, ParseError, detect_format, parse_results, parse_selector


@pytest.fixture(scope="module")
def samples(k6_outputs, results_fixtures) -> dict[str, bytes]:
    return {
        "k6-summary-export": k6_outputs.summary_export.read_bytes(),
        "k6-handle-summary": k6_outputs.handle_summary.read_bytes(),
        "k6-ndjson": k6_outputs.ndjson.read_bytes(),
        "locust-csv": (results_fixtures / "locust_stats.csv").read_bytes(),
        "locust-json": (results_fixtures / "locust.json").read_bytes(),
        "jmeter-jtl": (results_fixtures / "jmeter.jtl").read_bytes(),
    }


def test_every_format_has_a_sample():
    assert set(FORMATS) == {
        "k6-summary-export",
        "k6-handle-summary",
        "k6-ndjson",
        "locust-csv",
        "locust-json",
        "jmeter-jtl",
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_is_detected_from_its_content(samples, fmt):
    assert detect_format(samples[fmt]) == fmt
    # A misleading name changes nothing: the content decides.
    assert detect_format(samples[fmt], filename="results.jtl") == fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_is_detected_from_its_first_kilobytes(samples, fmt):
    assert detect_format(samples[fmt][:2048]) == fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_parse_results_detects_and_parses_each_format(samples, fmt):
    result = parse_results(io.BytesIO(samples[fmt]))
    assert result.format == fmt
    assert result.request_count > 0


def test_a_utf8_bom_does_not_hide_the_format(samples):
    data = b"\xef\xbb\xbf" + samples["jmeter-jtl"]
    assert detect_format(data) == "jmeter-jtl"
    assert parse_results(io.BytesIO(data)).request_count == 48


def test_a_summary_larger_than_the_detection_head_is_read_whole(samples):
    document = json.loads(samples["k6-handle-summary"])
    # A big root_group first, as a script with many checks produces: the metrics come late.
    document = {
        "root_group": {
            "name": "",
            "path": "",
            "id": "x",
            "groups": [],
            "checks": [
                {"name": f"check {i}", "path": f"::check {i}", "id": str(i), "passes": 1, "fails": 0}
                for i in range(2000)
            ],
        },
        **{k: v for k, v in document.items() if k != "root_group"},
    }
    data = json.dumps(document, indent=4).encode()
    assert len(data) > 100_000
    result = parse_results(io.BytesIO(data))
    assert result.format == "k6-handle-summary"
    assert result.request_count > 0


def test_unknown_content_is_an_error_listing_the_supported_formats():
    with pytest.raises(ParseError) as error:
        detect_format(b"<html><body>502 Bad Gateway</body></html>", filename="k6.ndjson")
    message = str(error.value)
    assert message.startswith("k6.ndjson: unrecognised results format")
    assert "'<html><body>502 Bad Gateway</body></html>'" in message
    assert "the name suggests k6-ndjson" in message
    for fmt in FORMATS:
        assert fmt in message


def test_json_of_an_unknown_shape_is_an_error_saying_so():
    with pytest.raises(ParseError) as error:
        detect_format(b'{"status": "ok"}')
    assert "JSON, but not a shape perfgate knows" in str(error.value)


def test_an_empty_file_is_an_error_naming_it(tmp_path):
    empty = tmp_path / "results.json"
    empty.write_bytes(b"")
    with pytest.raises(ParseError) as error:
        parse_results(empty)
    assert str(error.value).startswith(f"{empty}: the file is empty")


def test_named_format_skips_detection_and_names_the_stream():
    with pytest.raises(ParseError) as error:
        parse_results(io.BytesIO(b"timeStamp,elapsed\n"), format="locust-csv", name="upload #7")
    assert str(error.value).startswith("upload #7: line 1: missing required column(s) 'Type', 'Name'")


def test_unknown_format_name_and_bad_arguments_are_the_callers_mistake():
    with pytest.raises(ValueError, match="unknown results format"):
        parse_results(io.BytesIO(b""), format="gatling")
    with pytest.raises(ValueError, match="percentiles"):
        parse_results(io.BytesIO(b""), percentiles=[101])
    with pytest.raises(ValueError, match="submetric"):
        parse_results(io.BytesIO(b""), submetrics=["http_req_duration{name:x"])


def test_a_text_stream_is_refused_with_a_clear_message():
    with pytest.raises(TypeError, match="binary stream"):
        parse_results(io.StringIO("timeStamp,elapsed,label,success\n"))


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("http_req_duration", ("http_req_duration", ())),
        ("http_req_duration{name:guests}", ("http_req_duration", (("name", "guests"),))),
        (
            "http_req_failed{name:rsvp,method:POST}",
            ("http_req_failed", (("method", "POST"), ("name", "rsvp"))),
        ),
        ("http_req_duration{ name : 'guest list' }", ("http_req_duration", (("name", "guest list"),))),
        ("checks{group:::setup}", ("checks", (("group", "::setup"),))),
        ("http_reqs{expected_response}", ("http_reqs", (("expected_response", ""),))),
        ("http_reqs{}", ("http_reqs", ())),
    ],
)
def test_selectors_parse_like_k6(selector, expected):
    assert parse_selector(selector) == expected


@pytest.mark.parametrize("selector", ["", "{name:x}", "http_reqs{name:x", "http_reqs}", "http_reqs{:x}"])
def test_malformed_selectors_are_refused(selector):
    with pytest.raises(ValueError):
        parse_selector(selector)


def test_results_parsers_import_no_django():
    # Pure code: the parsers must stay usable (and their tests fast) without Django configured.
    code = (
        "import sys, gates.results\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'django'], 'django was imported'\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
