"""The k6 parsers against the output of a real k6 run (see tests/k6_run.py)."""

from __future__ import annotations

import io
import math
from array import array

import orjson
import pytest

from gates.results import parse_results
from gates.results.k6_ndjson import parse_k6_ndjson
from gates.results.trend import TrendStore

GUESTS = (("name", "guests"),)
COMPARED = ("avg", "min", "med", "max", "p(90)", "p(95)", "p(99)", "count")


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


@pytest.fixture(scope="module")
def export(k6_outputs):
    return parse_results(k6_outputs.summary_export)


@pytest.fixture(scope="module")
def handle(k6_outputs):
    return parse_results(k6_outputs.handle_summary)


@pytest.fixture(scope="module")
def ndjson(k6_outputs):
    return parse_results(k6_outputs.ndjson, submetrics=["http_req_failed{name:rsvp,method:POST}"])


def test_real_k6_run_made_enough_requests_to_compare(export):
    assert export.request_count > 50


@pytest.mark.parametrize(
    "key", ["http_req_duration", "http_req_duration{name:guests}", "http_req_waiting", "iteration_duration"]
)
def test_ndjson_percentiles_match_k6_summary(export, ndjson, key):
    ours, theirs = ndjson.series[key], export.series[key]
    for aggregation in COMPARED:
        assert close(ours.values[aggregation], theirs.values[aggregation]), (key, aggregation)
    assert ours.samples == theirs.samples
    assert ours.unit == theirs.unit == "ms"


def test_ndjson_rates_and_counts_equal_k6_summary_exactly(export, ndjson):
    for key in ("http_req_failed", "checks", "http_req_failed{name:rsvp}"):
        assert ndjson.series[key].values["rate"] == export.series[key].values["rate"], key
        assert ndjson.series[key].values["passes"] == export.series[key].values["passes"], key
        assert ndjson.series[key].values["fails"] == export.series[key].values["fails"], key
        assert ndjson.series[key].samples == export.series[key].samples, key
    for key in ("http_reqs", "iterations", "data_sent", "data_received"):
        assert ndjson.series[key].values["count"] == export.series[key].values["count"], key


def test_ndjson_failed_requests_are_passes_of_http_req_failed_as_in_k6(ndjson):
    failed = ndjson.series["http_req_failed"]
    assert failed.values["passes"] > 0  # the target fails 5% of requests
    assert failed.values["rate"] == failed.values["passes"] / failed.samples


def test_ndjson_counter_rate_uses_the_span_of_the_points(export, handle, ndjson):
    # k6 divides by the whole test duration; the NDJSON only knows its first and last point.
    assert 2.0 < ndjson.duration_seconds <= handle.duration_seconds
    reqs = ndjson.series["http_reqs"]
    assert reqs.values["rate"] == reqs.values["count"] / ndjson.duration_seconds
    assert math.isclose(reqs.values["rate"], export.series["http_reqs"].values["rate"], rel_tol=0.1)


def test_ndjson_computes_a_submetric_the_caller_asked_for(ndjson, k6_outputs):
    series = ndjson.series["http_req_failed{method:POST,name:rsvp}"]
    # The script only POSTs to rsvp, so this equals k6's own {name:rsvp} submetric.
    assert series.values == ndjson.series["http_req_failed{name:rsvp}"].values
    assert series.tags == (("method", "POST"), ("name", "rsvp"))


def test_ndjson_extra_percentiles_are_spelled_like_k6(k6_outputs):
    result = parse_results(k6_outputs.ndjson, percentiles=[99.9, 50, 75])
    values = result.series["http_req_duration"].values
    assert {"p(99.9)", "p(50)", "p(75)", "p(90)"} <= set(values)
    assert values["p(50)"] == values["med"]
    assert values["min"] <= values["p(75)"] <= values["p(99.9)"] <= values["max"]


def test_summary_export_and_handle_summary_parse_to_the_same_numbers(export, handle):
    assert set(export.series) == set(handle.series)
    for key, series in export.series.items():
        other = handle.series[key]
        assert (series.kind, series.samples, series.tags) == (other.kind, other.samples, other.tags), key
        assert series.values == other.values, key
    assert handle.duration_seconds > 2.0
    assert export.series["http_req_duration"].unit == handle.series["http_req_duration"].unit == "ms"
    assert export.series["data_received"].unit == handle.series["data_received"].unit == "bytes"


def test_deliberately_failing_threshold_is_not_ok_in_both_summary_formats(export, handle):
    for result in (export, handle):
        guests = result.tool_thresholds["http_req_duration{name:guests}"]
        assert guests == {"avg<1": False, "p(90)<1500": True}
        assert result.tool_thresholds["http_req_duration"] == {"p(95)<2000": True}
        assert result.tool_thresholds["http_req_failed{name:rsvp}"] == {"rate<0.5": True}


def test_k6_exit_code_says_a_threshold_was_crossed(k6_outputs):
    assert k6_outputs.exit_code == 99


def test_summary_series_resolve_through_find(export):
    guests = export.find("http_req_duration", GUESTS)
    assert guests is export.series["http_req_duration{name:guests}"]
    assert guests.samples == guests.values["count"]


def test_spilled_trends_give_identical_results_on_the_real_file(k6_outputs, ndjson):
    store = TrendStore(budget=64, run_values=50, chunk_values=7)
    with store, open(k6_outputs.ndjson, "rb") as stream:
        spilled = parse_k6_ndjson(
            stream,
            source="points.ndjson",
            store=store,
            submetrics=[("http_req_failed", (("method", "POST"), ("name", "rsvp")))],
        )
        assert store.spilled_runs > 10
        assert store.peak_held <= 64
    assert spilled.series.keys() == ndjson.series.keys()
    for key, series in ndjson.series.items():
        assert spilled.series[key].values == series.values, key
        assert spilled.series[key].samples == series.samples, key


class _WatchedArray(array):
    """An array('d') that reports every append, so a test sees memory between checkpoints too."""

    def __new__(cls, on_append):
        watched = super().__new__(cls, "d")
        watched.on_append = on_append
        return watched

    def append(self, value):
        super().append(value)
        self.on_append()


def test_ndjson_trend_store_never_holds_more_than_its_budget(k6_outputs):
    budget = 200
    held_after_each_append = []

    class WatchedStore(TrendStore):
        def _new_array(self):
            return _WatchedArray(lambda: held_after_each_append.append(self.held()))

    with WatchedStore(budget=budget, run_values=64) as store, open(k6_outputs.ndjson, "rb") as stream:
        result = parse_k6_ndjson(stream, store=store)
        assert store.spilled_values > 0
        assert store.peak_held == max(held_after_each_append)
    assert max(held_after_each_append) <= budget
    assert result.series["http_req_duration"].samples == result.series["http_reqs"].values["count"]


def export_of(metrics: dict) -> bytes:
    return orjson.dumps(
        {
            "root_group": {"name": "", "path": "", "id": "d41d8", "groups": {}, "checks": {}},
            "metrics": metrics,
        }
    )


def test_summary_export_trend_without_count_has_unknown_samples():
    result = parse_results(
        io.BytesIO(
            export_of(
                {
                    "http_req_duration": {
                        "avg": 12.5,
                        "min": 3.0,
                        "med": 11.0,
                        "max": 40.0,
                        "p(90)": 20.0,
                        "p(95)": 25.0,
                    }
                }
            )
        )
    )
    assert result.series["http_req_duration"].samples is None
    assert result.series["http_req_duration"].values["p(95)"] == 25.0


def test_summary_export_submetric_of_all_zeros_is_missing_data_not_a_fast_endpoint():
    result = parse_results(
        io.BytesIO(
            export_of(
                {
                    "http_req_duration": {"avg": 12.5, "min": 3.0, "med": 11.0, "max": 40.0, "p(95)": 25.0},
                    "http_req_duration{name:nobody}": {
                        "avg": 0,
                        "min": 0,
                        "med": 0,
                        "max": 0,
                        "p(90)": 0,
                        "p(95)": 0,
                        "thresholds": {"p(95)<500": False},
                    },
                }
            )
        )
    )
    empty = result.find("http_req_duration", (("name", "nobody"),))
    assert empty.samples == 0
    assert result.tool_thresholds["http_req_duration{name:nobody}"] == {"p(95)<500": True}


def test_handle_summary_submetric_of_all_zeros_has_zero_samples():
    document = {
        "state": {"testRunDurationMs": 1500.0},
        "metrics": {
            "http_req_duration{name:nobody}": {
                "type": "trend",
                "contains": "time",
                "values": {"avg": 0, "min": 0, "med": 0, "max": 0, "p(95)": 0},
            }
        },
    }
    result = parse_results(io.BytesIO(orjson.dumps(document)))
    assert result.series["http_req_duration{name:nobody}"].samples == 0
    assert result.duration_seconds == 1.5


def test_summary_export_kinds_are_inferred_from_keys_and_builtin_names():
    result = parse_results(
        io.BytesIO(
            export_of(
                {
                    "my_counter": {"count": 3, "rate": 0.5},
                    "my_rate": {"passes": 1, "fails": 3, "value": 0.25},
                    "my_gauge": {"value": 7, "min": 1, "max": 9},
                    "my_trend": {"avg": 1, "p(99.9)": 4},
                    "iteration_duration": {"count": 10},
                    "vus": {"value": 5},
                }
            )
        )
    )
    kinds = {key: series.kind for key, series in result.series.items()}
    assert kinds == {
        "my_counter": "counter",
        "my_rate": "rate",
        "my_gauge": "gauge",
        "my_trend": "trend",
        "iteration_duration": "trend",
        "vus": "gauge",
    }
    assert result.series["my_rate"].values == {"rate": 0.25, "passes": 1, "fails": 3}
    assert result.series["my_rate"].samples == 4
    assert result.series["iteration_duration"].unit == "ms" and result.series["my_trend"].unit == ""


def test_summary_export_keys_are_canonical_whatever_the_tag_order():
    result = parse_results(
        io.BytesIO(
            export_of({"http_req_failed{name:rsvp,method:POST}": {"passes": 1, "fails": 9, "value": 0.1}})
        )
    )
    assert list(result.series) == ["http_req_failed{method:POST,name:rsvp}"]
    assert result.find("http_req_failed", (("name", "rsvp"),)).values["rate"] == 0.1
