"""Whatever bytes arrive, every parser either returns a ResultSet or raises ParseError: never a
KeyError, TypeError, UnicodeDecodeError, RecursionError, OverflowError or anything else. What it
returns can be stored: every name fits its column and holds no control character (PostgreSQL
refuses NUL, and enforces the lengths SQLite ignores)."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gates.results import FORMATS, ParseError, ResultSet, detect_format, parse_results
from gates.results.common import MAX_AGGREGATION_CHARS, MAX_METRIC_CHARS, MAX_SERIES_CHARS

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# JSON values including what JSON itself cannot hold (NaN, inf) and integers beyond 64 bits.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**200)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["trend", "rate", "counter", "gauge", "Point", "Metric", "time", "0", "1e999", "N/A"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
good_keys = st.sampled_from(
    [
        "http_req_duration",
        "http_req_duration{name:guests}",
        "http_reqs",
        "http_req_failed",
        "vus",
        "checks",
        "iterations",
        "my_trend",
    ]
)


def encode(value) -> bytes:
    # The standard library writes NaN, Infinity and big integers, which real files may contain too.
    return json.dumps(value, allow_nan=True).encode()


CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def assert_storable(result: ResultSet) -> None:
    for series in result.series.values():
        assert not CONTROL_CHARACTER.search(series.key), series.key
        assert len(series.metric) <= MAX_METRIC_CHARS and len(series.key) <= MAX_SERIES_CHARS, series.key
        for aggregation in series.values:
            assert len(aggregation) <= MAX_AGGREGATION_CHARS, aggregation
            assert not CONTROL_CHARACTER.search(aggregation), aggregation


def outcome(data: bytes, fmt: str | None, **options) -> ResultSet | None:
    try:
        result = parse_results(io.BytesIO(data), format=fmt, name="fuzzed", **options)
    except ParseError:
        return None
    assert_storable(result)
    return result


@FUZZ
@given(data=st.binary(max_size=600), fmt=st.sampled_from((None, *FORMATS)))
def test_arbitrary_bytes_give_a_result_or_a_parse_error(data, fmt):
    outcome(data, fmt)


@FUZZ
@given(data=st.binary(max_size=300))
def test_detection_of_arbitrary_bytes_gives_a_format_or_a_parse_error(data):
    with contextlib.suppress(ParseError):
        assert detect_format(data) in FORMATS


@FUZZ
@given(value=json_values, fmt=st.sampled_from((None, *FORMATS)))
def test_arbitrary_json_values_give_a_result_or_a_parse_error(value, fmt):
    outcome(encode(value), fmt)


def json_paths(value, prefix: tuple = ()):
    """Every position in a JSON document, as a tuple of keys and indexes."""
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from json_paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from json_paths(inner, (*prefix, index))


@st.composite
def one_defect(draw, valid):
    """A well-formed document with one node replaced by any JSON value, or removed: every check
    the parser makes gets its turn, with everything around it valid."""
    document = copy.deepcopy(draw(valid))
    path = draw(st.sampled_from(list(json_paths(document))))
    replacement = draw(json_values)
    if not path:
        return replacement
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if draw(st.booleans()):
        parent[path[-1]] = replacement
    else:
        del parent[path[-1]]
    return document


numbers = st.integers(min_value=0, max_value=500) | st.floats(min_value=0, max_value=1e4)
trend_values = st.fixed_dictionaries(dict.fromkeys(("avg", "min", "med", "max", "p(95)", "count"), numbers))
rate_values = st.fixed_dictionaries({"passes": numbers, "fails": numbers, "value": numbers})
threshold_flags = st.dictionaries(
    st.sampled_from(["p(95)<400", "rate<0.01", "count>0"]), st.booleans(), max_size=2
)

valid_summary = st.fixed_dictionaries(
    {
        "metrics": st.dictionaries(
            good_keys,
            st.one_of(
                trend_values,
                rate_values,
                st.fixed_dictionaries({"count": numbers, "rate": numbers}),
                st.fixed_dictionaries({"value": numbers, "min": numbers, "max": numbers}),
                st.fixed_dictionaries({"avg": numbers, "thresholds": threshold_flags}),
            ),
            max_size=4,
        ),
        "root_group": st.just({"name": "", "path": "", "id": "d41d8", "groups": {}, "checks": {}}),
    },
    optional={"state": st.fixed_dictionaries({"testRunDurationMs": numbers})},
)

valid_handle = st.fixed_dictionaries(
    {
        "metrics": st.dictionaries(
            good_keys,
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["trend", "rate", "counter", "gauge"]),
                    "contains": st.sampled_from(["time", "data", "default"]),
                    "values": trend_values | rate_values,
                },
                optional={
                    "thresholds": st.dictionaries(
                        st.sampled_from(["p(95)<400", "rate<0.01"]),
                        st.fixed_dictionaries({"ok": st.booleans()}),
                        max_size=2,
                    )
                },
            ),
            max_size=4,
        ),
        "state": st.fixed_dictionaries({"testRunDurationMs": numbers}),
    }
)

tags = st.dictionaries(
    st.sampled_from(["name", "method", "status"]), st.sampled_from(["guests", "GET", "200"]), max_size=3
)
valid_ndjson = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "type": st.just("Metric"),
                "metric": good_keys,
                "data": st.fixed_dictionaries(
                    {
                        "name": good_keys,
                        "type": st.sampled_from(["trend", "rate", "counter", "gauge"]),
                        "contains": st.sampled_from(["time", "data", "default"]),
                        "thresholds": st.just([]),
                        "submetrics": st.none()
                        | st.lists(
                            st.fixed_dictionaries(
                                {
                                    "name": st.just("x{name:guests}"),
                                    "suffix": st.just("name:guests"),
                                    "tags": tags,
                                }
                            ),
                            max_size=2,
                        ),
                    }
                ),
            }
        ),
        st.fixed_dictionaries(
            {
                "metric": good_keys,
                "type": st.just("Point"),
                "data": st.fixed_dictionaries(
                    {
                        "time": st.sampled_from(
                            ["2026-11-24T10:00:00Z", "2026-11-24T11:00:00.5+01:00", "2026-11-24T10:00:01.1Z"]
                        ),
                        "value": numbers,
                        "tags": tags,
                    }
                ),
            }
        ),
    ),
    min_size=1,
    max_size=8,
)

valid_locust = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["guests", "rsvp"]),
            "method": st.sampled_from(["GET", "POST", None]),
            "last_request_timestamp": st.floats(min_value=1.7e9, max_value=1.8e9) | st.none(),
            "start_time": st.floats(min_value=1.7e9, max_value=1.8e9),
            "num_requests": st.integers(min_value=0, max_value=50),
            "num_none_requests": st.just(0),
            "num_failures": st.integers(min_value=0, max_value=50),
            "total_response_time": numbers,
            "max_response_time": numbers,
            "min_response_time": numbers | st.none(),
            "total_content_length": st.integers(min_value=0),
            "response_times": st.dictionaries(
                st.sampled_from(["9", "10", "150", "3400"]),
                st.integers(min_value=0, max_value=20),
                max_size=4,
            ),
        }
    ),
    min_size=1,
    max_size=3,
)

SUBMETRICS = [
    "http_req_duration{name:guests}",
    "http_reqs{method:GET}",
    "http_req_failed{name:rsvp,status:200}",
]


@FUZZ
@given(
    document=one_defect(valid_summary | valid_handle),
    fmt=st.sampled_from([None, "k6-summary-export", "k6-handle-summary"]),
)
def test_summaries_with_one_defect_give_a_result_or_a_parse_error(document, fmt):
    outcome(encode(document), fmt)


@FUZZ
@given(lines=one_defect(valid_ndjson))
def test_ndjson_with_one_defect_gives_a_result_or_a_parse_error(lines):
    data = b"".join(encode(line) + b"\n" for line in lines) if isinstance(lines, list) else encode(lines)
    outcome(data, "k6-ndjson", submetrics=SUBMETRICS)
    outcome(data, None)


@FUZZ
@given(entries=one_defect(valid_locust))
def test_locust_json_with_one_defect_gives_a_result_or_a_parse_error(entries):
    outcome(encode(entries), "locust-json", submetrics=SUBMETRICS)


odd_cells = st.sampled_from(
    [
        "",
        "0",
        "-1",
        "1.5",
        "N/A",
        "maybe",
        "nan",
        "inf",
        "1e400",
        "9" * 400,
        '"',
        "a,b",
        "\n",
        "\x00",
        "1_000",
        " 7 ",
    ]
) | st.text(max_size=8)
jtl_rows = st.tuples(
    st.integers(min_value=1_700_000_000_000, max_value=1_800_000_000_000).map(str),
    st.integers(min_value=0, max_value=5000).map(str),
    st.sampled_from(["a", "b", "caf\xe9"]),
    st.sampled_from(["true", "false", "TRUE"]),
    st.sampled_from(["200", "503", "Non HTTP"]),
    st.integers(min_value=0, max_value=10**6).map(str),
    st.integers(0, 999).map(str),
)
locust_rows = st.tuples(
    st.sampled_from(["GET", "POST", ""]),
    st.sampled_from(["guests", "Aggregated"]),
    *[st.integers(min_value=0, max_value=99).map(str)] * 2,
    *[st.floats(min_value=0, max_value=1e4).map(repr) | st.just("N/A")] * 6,
    st.integers(min_value=0, max_value=99).map(str),
)


@st.composite
def csv_rows(draw, valid):
    """Well-formed rows with, now and then, one odd cell or a cell too many or too few."""
    rows = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        row = list(draw(valid))
        change = draw(st.sampled_from(["none", "none", "cell", "cell", "longer", "shorter"]))
        if change == "cell":
            row[draw(st.integers(min_value=0, max_value=len(row) - 1))] = draw(odd_cells)
        elif change == "longer":
            row.append(draw(odd_cells))
        elif change == "shorter":
            row.pop()
        rows.append(row)
    return rows


@FUZZ
@given(rows=csv_rows(jtl_rows))
def test_jtl_rows_give_a_result_or_a_parse_error(rows):
    body = "\n".join(",".join(row) for row in rows)
    data = f"timeStamp,elapsed,label,success,responseCode,bytes,sentBytes\n{body}\n".encode()
    outcome(data, "jmeter-jtl", submetrics=["http_req_duration{name:a,status:200}"])
    outcome(data, None)


@FUZZ
@given(rows=csv_rows(locust_rows))
def test_locust_csv_rows_give_a_result_or_a_parse_error(rows):
    header = (
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
        "Min Response Time,Max Response Time,Requests/s,95%,99.9%"
    )
    body = "\n".join(",".join(row) for row in rows)
    outcome(f"{header}\n{body}\n".encode(), "locust-csv")


@pytest.fixture(scope="module")
def real_outputs(k6_outputs, results_fixtures) -> list[bytes]:
    ndjson_head = b"".join(k6_outputs.ndjson.read_bytes().splitlines(keepends=True)[:300])
    return [
        k6_outputs.summary_export.read_bytes(),
        k6_outputs.handle_summary.read_bytes(),
        ndjson_head,
        (results_fixtures / "locust_stats.csv").read_bytes(),
        (results_fixtures / "locust.json").read_bytes(),
        (results_fixtures / "jmeter.jtl").read_bytes(),
    ]


mutations = st.lists(
    st.tuples(
        st.sampled_from(["delete", "insert", "replace", "truncate", "duplicate"]),
        st.floats(min_value=0, max_value=1),
        st.binary(min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, steps) -> bytes:
    for action, where, payload in steps:
        at = int(where * len(data))
        if action == "delete":
            data = data[:at] + data[at + len(payload) :]
        elif action == "insert":
            data = data[:at] + payload + data[at:]
        elif action == "replace":
            data = data[:at] + payload + data[at + len(payload) :]
        elif action == "truncate":
            data = data[:at]
        else:
            data = data[:at] + data[at : at + 200] + data[at:]
    return data


@FUZZ
@given(which=st.integers(min_value=0, max_value=5), steps=mutations, detect=st.booleans())
def test_mutated_real_outputs_give_a_result_or_a_parse_error(real_outputs, which, steps, detect):
    fmt = None if detect else FORMATS[which]  # real_outputs is in the order of FORMATS
    outcome(mutate(real_outputs[which], steps), fmt)


REPLACEMENTS = [None, True, "abc", "", [1], {}, {"x": 1}, -1, 0, 1e308, -1e308, 2**70, 0.5]


def with_defect(document, path: tuple, replacement, delete: bool):
    document = copy.deepcopy(document)
    if not path:
        return replacement
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return document


def every_defect(document):
    """Each node of the document removed, and replaced by each odd value in turn."""
    for path in json_paths(document):
        if path:
            yield with_defect(document, path, None, delete=True)
        for replacement in REPLACEMENTS:
            yield with_defect(document, path, replacement, delete=False)


@pytest.mark.parametrize("which", ["summary_export", "handle_summary"])
def test_every_single_defect_in_real_k6_summaries_gives_a_result_or_a_parse_error(k6_outputs, which):
    document = json.loads(getattr(k6_outputs, which).read_bytes())
    # Every metric with thresholds and a few without: all shapes, in a document small enough to parse
    # a few thousand times.
    metrics = document["metrics"]
    kept = [key for key in metrics if "thresholds" in metrics[key]]
    kept += [key for key in ("http_reqs", "vus", "http_req_failed", "checks") if key not in kept]
    document["metrics"] = {key: metrics[key] for key in kept}
    fmt = "k6-summary-export" if which == "summary_export" else "k6-handle-summary"
    for defective in every_defect(document):
        outcome(encode(defective), fmt)
        outcome(encode(defective), None)


def test_every_single_defect_in_real_ndjson_lines_gives_a_result_or_a_parse_error(k6_outputs):
    lines = [json.loads(line) for line in k6_outputs.ndjson.read_bytes().splitlines()[:40]]
    for index, line in enumerate(lines):
        for defective in every_defect(line):
            changed = [defective if i == index else other for i, other in enumerate(lines)]
            data = b"".join(encode(each) + b"\n" for each in changed)
            outcome(data, "k6-ndjson", submetrics=SUBMETRICS)


def test_every_single_defect_in_a_real_locust_json_gives_a_result_or_a_parse_error(results_fixtures):
    for defective in every_defect(json.loads((results_fixtures / "locust.json").read_bytes())):
        outcome(encode(defective), "locust-json", submetrics=SUBMETRICS)


ODD_CELLS = ["", "-1", "1.5", "N/A", "maybe", "nan", "inf", "1e400", "9" * 400, "a,b", "caf\xe9", " 7 "]


@pytest.mark.parametrize(
    ("fixture", "fmt"), [("jmeter.jtl", "jmeter-jtl"), ("locust_stats.csv", "locust-csv")]
)
def test_every_odd_cell_in_real_csv_results_gives_a_result_or_a_parse_error(results_fixtures, fixture, fmt):
    with open(results_fixtures / fixture, newline="") as file:
        rows = list(csv.reader(file))[:6]
    for row_index, row in enumerate(rows):
        for cell_index in range(len(row)):
            for odd in ODD_CELLS:
                changed = [list(r) for r in rows]
                changed[row_index][cell_index] = odd
                text = io.StringIO()
                csv.writer(text).writerows(changed)
                outcome(text.getvalue().encode(), fmt, submetrics=SUBMETRICS)


def test_deeply_nested_json_is_a_parse_error_not_a_recursion_error():
    for fmt in (None, "k6-summary-export", "k6-handle-summary", "locust-json", "k6-ndjson"):
        assert outcome(b"[" * 100_000 + b"]" * 100_000, fmt) is None
        assert outcome(b'{"metrics":' * 5_000 + b"1" + b"}" * 5_000, fmt) is None


def test_invalid_utf8_is_a_parse_error_or_replaced_in_labels():
    assert outcome(b'{"metrics": {"\xff\xfe": {"count": 1, "rate": 1}}}', "k6-summary-export") is None
    result = outcome(b"timeStamp,elapsed,label,success\n1795516249146,13,caf\xe9,true\n", None)
    assert result.series["http_req_duration{name:caf\ufffd}"].samples == 1


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def with_note(document: str, note: str) -> bytes:
    """A results document with an extra, ignored ``note`` two levels down (state, or an entry)."""
    return document.replace('"NOTE"', note).encode()


DOCUMENTS_WITH_A_NOTE = {
    "k6-summary-export": '{"metrics": {"http_reqs": {"count": 10, "rate": 1}}, '
    '"state": {"testRunDurationMs": 9, "note": "NOTE"}}',
    "k6-handle-summary": '{"metrics": {"http_reqs": {"type": "counter", "contains": "default", "values": '
    '{"count": 10, "rate": 1}}}, "state": {"testRunDurationMs": 9, "note": "NOTE"}}',
    "locust-json": '[{"name": "guests", "method": "GET", "num_requests": 1, "num_failures": 0, '
    '"total_response_time": 9, "max_response_time": 9, "min_response_time": 9, "response_times": {"9": 1}, '
    '"start_time": 1795516705.4, "last_request_timestamp": 1795516706.4, "note": "NOTE"}]',
}


@pytest.mark.parametrize("fmt", list(DOCUMENTS_WITH_A_NOTE))
@pytest.mark.parametrize("detect", [False, True])
def test_json_nested_more_than_64_levels_is_a_parse_error(fmt, detect):
    document = DOCUMENTS_WITH_A_NOTE[fmt]
    # Two levels above the note: 62 more make 64 in all, the most that is read.
    assert outcome(with_note(document, nested(62)), None if detect else fmt) is not None
    for depth in (63, 1_000):
        with pytest.raises(ParseError, match="depth limit exceeded"):
            parse_results(io.BytesIO(with_note(document, nested(depth))), format=None if detect else fmt)


# Unstorable whether the name is a metric (k6) or a label, a tag of http_req_duration (JMeter).
UNSTORABLE_NAMES = [
    "http_req\x00duration",
    "http_req\tduration",
    "vus\x7f",
    "m" * (MAX_SERIES_CHARS + 1),
    "http_req_duration{name:" + "x" * (MAX_SERIES_CHARS - 23) + "}",
    "http_req_duration{name:a\x00b}",
]


def name_in_every_format(name: str) -> dict[str, bytes]:
    """One results file per format whose one metric (or label, for Locust and JMeter) is ``name``."""
    summary = {"metrics": {name: {"count": 10, "rate": 1.0}}}
    handle = {"metrics": {name: {"type": "counter", "contains": "default", "values": {"count": 10}}}}
    point = {
        "type": "Point",
        "metric": name,
        "data": {"time": "2026-11-24T10:00:00Z", "value": 1, "tags": {}},
    }
    text = io.StringIO()
    csv.writer(text).writerows(
        [["timeStamp", "elapsed", "label", "success"], ["1795516249146", "13", name, "true"]]
    )
    return {
        "k6-summary-export": json.dumps(summary).encode(),
        "k6-handle-summary": json.dumps(handle).encode(),
        "k6-ndjson": json.dumps(point).encode() + b"\n",
        "jmeter-jtl": text.getvalue().encode(),
    }


@pytest.mark.parametrize("name", UNSTORABLE_NAMES)
def test_a_metric_name_that_cannot_be_stored_is_a_parse_error_in_every_format(name):
    for fmt, data in name_in_every_format(name).items():
        with pytest.raises(ParseError, match="impossible metric name"):
            parse_results(io.BytesIO(data), format=fmt)


def test_a_metric_name_longer_than_its_column_is_a_parse_error():
    data = name_in_every_format("m" * (MAX_METRIC_CHARS + 1))["k6-summary-export"]
    with pytest.raises(ParseError, match=f"a metric name has at most {MAX_METRIC_CHARS} characters"):
        parse_results(io.BytesIO(data), format="k6-summary-export")


def test_the_longest_names_that_fit_their_columns_are_read():
    longest_metric = "m" * MAX_METRIC_CHARS
    longest_series = "http_req_duration{name:" + "x" * (MAX_SERIES_CHARS - 24) + "}"
    for name in (longest_metric, longest_series):
        result = outcome(name_in_every_format(name)["k6-summary-export"], "k6-summary-export")
        assert [series.key for series in result.series.values()] == [name]


@pytest.mark.parametrize("aggregation", ["p(95\x00)", "p(" + "9" * (MAX_AGGREGATION_CHARS - 2) + ")"])
def test_an_aggregation_name_that_cannot_be_stored_is_a_parse_error(aggregation):
    handle = {"metrics": {"http_reqs": {"type": "trend", "contains": "time", "values": {aggregation: 1}}}}
    with pytest.raises(ParseError, match="impossible aggregation name"):
        parse_results(io.BytesIO(json.dumps(handle).encode()), format="k6-handle-summary")


@FUZZ
@given(name=st.sampled_from(UNSTORABLE_NAMES) | st.text(max_size=320), fmt=st.sampled_from(FORMATS))
def test_any_metric_name_gives_a_storable_result_or_a_parse_error(name, fmt):
    data = name_in_every_format(name).get(fmt)
    if data is not None:
        outcome(data, fmt)
