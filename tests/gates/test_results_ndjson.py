"""The streamed k6 NDJSON parser on small hand-made files: the cases real runs rarely show."""

from __future__ import annotations

import io
import os
import threading

import orjson
import pytest

from gates.results import ParseError, parse_results

TAGS = {"name": "guests", "method": "GET", "status": "200", "expected_response": "true"}


def declare(metric: str, kind: str, contains: str = "default", submetrics: list[dict] | None = None) -> dict:
    return {
        "type": "Metric",
        "metric": metric,
        "data": {
            "name": metric,
            "type": kind,
            "contains": contains,
            "thresholds": [],
            "submetrics": [{"name": f"{metric}{{...}}", "suffix": "", "tags": tags} for tags in submetrics]
            if submetrics
            else None,
        },
    }


def point(metric: str, value, time: str = "2026-11-24T10:00:00.5Z", tags: dict | None = None) -> dict:
    return {
        "metric": metric,
        "type": "Point",
        "data": {"time": time, "value": value, "tags": TAGS if tags is None else tags},
    }


def ndjson(*objects) -> bytes:
    return b"".join(obj if isinstance(obj, bytes) else orjson.dumps(obj) + b"\n" for obj in objects)


def parse(data: bytes, **kwargs):
    return parse_results(io.BytesIO(data), format="k6-ndjson", name="points.ndjson", **kwargs)


def test_blank_lines_and_unknown_line_types_are_skipped():
    result = parse(
        ndjson(
            declare("http_reqs", "counter"),
            b"\n",
            b"   \r\n",
            {"type": "Annotation", "data": {"text": "deploy"}},
            point("http_reqs", 1),
            point("http_reqs", 1),
        )
    )
    assert result.series["http_reqs"].values["count"] == 2


def test_counter_rate_uses_first_and_last_point_time():
    result = parse(
        ndjson(
            declare("http_reqs", "counter"),
            point("http_reqs", 1, "2026-11-24T10:00:01Z"),
            point("http_reqs", 1, "2026-11-24T10:00:03.5Z"),
            point("http_reqs", 1, "2026-11-24T10:00:00Z"),
            point("http_reqs", 1, "2026-11-24T10:00:02Z"),
        )
    )
    assert result.duration_seconds == 3.5
    assert result.series["http_reqs"].values == {"count": 4.0, "rate": 4 / 3.5}


def test_trimmed_nanosecond_fractions_are_ordered_by_time_not_by_text():
    # Go writes 10:00:00.1Z rather than 10:00:00.100000000Z; as text ".1Z" sorts after ".15Z".
    result = parse(
        ndjson(
            declare("iterations", "counter"),
            point("iterations", 1, "2026-11-24T10:00:00.1Z"),
            point("iterations", 1, "2026-11-24T10:00:00.15Z"),
            point("iterations", 1, "2026-11-24T10:00:00Z"),
            point("iterations", 1, "2026-11-24T10:00:00.000000001Z"),
        )
    )
    assert result.duration_seconds == 0.15


def test_utc_offsets_are_honoured_even_when_they_change_mid_file():
    result = parse(
        ndjson(
            declare("iterations", "counter"),
            point("iterations", 1, "2026-10-25T02:59:58.25+02:00"),  # 00:59:58.25Z
            point("iterations", 1, "2026-10-25T02:00:03+01:00"),  # 01:00:03Z, after DST ended
            point("iterations", 1, "2026-10-25T01:00:00.75Z"),
            point("iterations", 1, "2026-10-24T20:00:00-05:00"),
        )
    )  # 01:00:00Z
    assert result.duration_seconds == 4.75


def test_nanosecond_timestamps_keep_their_precision():
    result = parse(
        ndjson(
            declare("iterations", "counter"),
            point("iterations", 1, "2026-11-24T10:24:15.787714737Z"),
            point("iterations", 1, "2026-11-24T10:24:15.787714738Z"),
        )
    )
    assert result.duration_seconds == 1e-9


def test_submetric_matches_points_whose_tags_include_all_its_tags():
    result = parse(
        ndjson(
            declare("http_req_duration", "trend", "time", submetrics=[{"name": "guests"}]),
            point("http_req_duration", 10.0),
            point("http_req_duration", 30.0, tags={**TAGS, "status": "503"}),
            point("http_req_duration", 50.0, tags={**TAGS, "name": "rsvp", "method": "POST"}),
        ),
        submetrics=["http_req_duration{name:guests,status:503}", "http_req_duration{method:POST}"],
    )
    assert result.series["http_req_duration"].values["count"] == 3
    assert result.series["http_req_duration{name:guests}"].values["max"] == 30.0
    assert result.series["http_req_duration{name:guests,status:503}"].values["avg"] == 30.0
    assert result.series["http_req_duration{method:POST}"].samples == 1
    assert result.series["http_req_duration{name:guests}"].unit == "ms"


def test_submetric_without_any_point_has_zero_samples_and_no_latency():
    result = parse(
        ndjson(
            declare("http_req_duration", "trend", "time"),
            point("http_req_duration", 10.0),
            declare("http_req_failed", "rate"),
            point("http_req_failed", 0),
        ),
        submetrics=[
            "http_req_duration{name:nobody}",
            "http_req_failed{name:nobody}",
            "http_reqs{name:nobody}",
            "custom_metric{name:nobody}",
        ],
    )
    empty = result.series["http_req_duration{name:nobody}"]
    assert empty.samples == 0 and empty.values == {"count": 0.0}
    assert result.series["http_req_failed{name:nobody}"].values == {"passes": 0.0, "fails": 0.0}
    # A built-in metric absent from the file still answers, with zero samples.
    assert result.series["http_reqs{name:nobody}"].samples == 0
    assert "custom_metric{name:nobody}" not in result.series


def test_rate_passes_count_non_zero_values_as_k6_does():
    result = parse(
        ndjson(
            declare("http_req_failed", "rate"),
            *(point("http_req_failed", value) for value in (0, 1, 0, 0, 1, 0.0, 2)),
        )
    )
    assert result.series["http_req_failed"].values == {"rate": 3 / 7, "passes": 3.0, "fails": 4.0}
    assert result.series["http_req_failed"].samples == 7


def test_gauge_keeps_the_last_value_and_its_range():
    result = parse(ndjson(declare("vus", "gauge"), point("vus", 1), point("vus", 7), point("vus", 3)))
    assert result.series["vus"].values == {"value": 3.0, "min": 1.0, "max": 7.0}


def test_points_before_any_metric_line_take_builtin_kinds_or_are_read_as_trends():
    result = parse(
        ndjson(
            point("http_reqs", 1), point("http_reqs", 1), point("my_latency", 4.0), point("my_latency", 6.0)
        )
    )
    assert result.series["http_reqs"].kind == "counter"
    assert result.series["http_reqs"].values["count"] == 2
    assert result.series["my_latency"].kind == "trend"
    assert result.series["my_latency"].values["avg"] == 5.0


def test_concatenated_files_of_one_script_add_up():
    one_run = ndjson(declare("http_reqs", "counter"), point("http_reqs", 1), point("http_reqs", 1))
    result = parse(one_run + one_run + one_run)
    assert result.series["http_reqs"].values["count"] == 6


def test_a_metric_declared_with_another_kind_than_its_points_is_an_error():
    with pytest.raises(ParseError) as error:
        parse(ndjson(point("my_metric", 4.0), declare("my_metric", "counter")))
    assert "points.ndjson: line 2" in str(error.value)
    assert "declared as a counter after being read as a trend" in str(error.value)


def test_a_line_that_is_not_json_names_the_file_and_line():
    with pytest.raises(ParseError) as error:
        parse(
            ndjson(declare("http_reqs", "counter"), point("http_reqs", 1), b'{"metric":"http_reqs","type":\n')
        )
    message = str(error.value)
    assert message.startswith("points.ndjson: line 3: ")
    assert "invalid JSON" in message
    assert error.value.line == 3


@pytest.mark.parametrize(
    ("value", "shown"), [("12", "'12'"), (None, "null"), (True, "true"), ([1], "a list")]
)
def test_a_value_that_is_not_a_number_is_an_error(value, shown):
    with pytest.raises(ParseError) as error:
        parse(
            ndjson(
                declare("http_req_duration", "trend", "time"),
                point("http_req_duration", 1.0),
                point("http_req_duration", value),
            )
        )
    assert str(error.value) == f"points.ndjson: line 3: field 'data.value': expected a number, got {shown}"


def test_a_timestamp_that_is_not_rfc3339_is_an_error():
    with pytest.raises(ParseError) as error:
        parse(ndjson(point("http_reqs", 1, time="yesterday")))
    assert "line 1" in str(error.value) and "data.time" in str(error.value)
    assert "expected an RFC 3339 timestamp, got 'yesterday'" in str(error.value)


def test_tags_that_are_not_an_object_are_an_error():
    with pytest.raises(ParseError) as error:
        parse(
            ndjson(
                declare("http_req_duration", "trend", "time", submetrics=[{"name": "guests"}]),
                point("http_req_duration", 1.0, tags=["guests"]),
            )
        )
    assert "line 2" in str(error.value) and "data.tags" in str(error.value)


def test_a_non_seekable_stream_is_read_once_without_loading_it_whole():
    data = ndjson(declare("http_reqs", "counter"), *(point("http_reqs", 1) for _ in range(20000)))
    read_fd, write_fd = os.pipe()

    def feed():
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        assert not pipe.seekable()
        result = parse_results(pipe)  # detected from the first line, then streamed
    writer.join()
    assert result.format == "k6-ndjson"
    assert result.series["http_reqs"].values["count"] == 20000


WARMUP = {**TAGS, "scenario": "warmup", "perfgate_phase": "warmup"}
MEASURED = {**TAGS, "scenario": "measure"}


def warmed_up_run() -> bytes:
    """A run's shape as k6 writes it: an untagged gauge from the start, a 10 s warm-up whose
    requests are slow and tagged, then the measured part."""
    return ndjson(
        declare("vus", "gauge"),
        declare("http_reqs", "counter"),
        declare("http_req_duration", "trend", "time", submetrics=[{"name": "guests"}]),
        point("vus", 0, "2026-11-24T10:00:00Z", tags={}),
        *(
            point(metric, value, f"2026-11-24T10:00:0{second}.5Z", tags=WARMUP)
            for second, latency in ((1, 900.0), (4, 700.0), (9, 500.0))
            for metric, value in (("http_reqs", 1), ("http_req_duration", latency))
        ),
        point("vus", 5, "2026-11-24T10:00:10Z", tags={}),
        *(
            point(metric, value, f"2026-11-24T10:00:{second}Z", tags=MEASURED)
            for second, latency in ((12, 10.0), (16, 20.0), (20, 30.0), (20.5, 40.0))
            for metric, value in (("http_reqs", 1), ("http_req_duration", latency))
        ),
    )


def test_warm_up_points_are_left_out_of_every_number_and_counted_apart():
    result = parse(warmed_up_run(), warmup_tag=("perfgate_phase", "warmup"))

    assert result.series["http_reqs"].values["count"] == 4
    duration = result.series["http_req_duration"]
    assert (duration.samples, duration.values["max"]) == (4, 40.0)
    assert result.series["http_req_duration{name:guests}"].values["max"] == 40.0
    # The measured part starts where the warm-up ends (its last point), not with the first gauge.
    assert result.duration_seconds == 20.5 - 9.5
    assert result.series["http_reqs"].values["rate"] == 4 / 11.0
    assert result.warmup is not None
    assert (result.warmup.seconds, result.warmup.requests, result.warmup.excluded) == (9.5, 3, True)
    assert result.series["vus"].values["max"] == 5  # untagged points are kept


def test_the_load_check_says_how_much_warm_up_was_left_out():
    from gates.rules.evaluation import evaluate_load

    check = evaluate_load(parse(warmed_up_run(), warmup_tag=("perfgate_phase", "warmup")), 2)
    assert check.reason == "4 requests measured (warm-up of 9.5 s, 3 requests, excluded), at least 2 needed"
    assert check.observed == 4.0
    too_few = evaluate_load(parse(warmed_up_run(), warmup_tag=("perfgate_phase", "warmup")), 5)
    assert too_few.reason.startswith("insufficient load: 4 requests measured (warm-up of 9.5 s, 3 requests")
    assert evaluate_load(parse(warmed_up_run()), 2).reason == "7 requests, at least 2 needed"


def test_without_a_warm_up_tag_every_point_counts_as_before():
    result = parse(warmed_up_run())
    assert result.series["http_reqs"].values["count"] == 7
    assert result.series["http_req_duration"].values["max"] == 900.0
    assert result.duration_seconds == 20.5 and result.warmup is None


def test_warm_up_points_in_another_utc_offset_or_first_in_the_file_are_left_out_too():
    result = parse(
        ndjson(
            point("http_reqs", 1, "2026-11-24T11:00:01+01:00", tags=WARMUP),  # before any Metric line
            declare("http_reqs", "counter"),
            point("http_reqs", 1, "2026-11-24T10:00:02Z", tags=WARMUP),
            point("http_reqs", 1, "2026-11-24T10:00:02.5Z", tags=MEASURED),
            point("http_reqs", 1, "2026-11-24T10:00:04.5Z", tags=MEASURED),
        ),
        warmup_tag=("perfgate_phase", "warmup"),
    )
    assert result.series["http_reqs"].values["count"] == 2
    assert result.duration_seconds == 2.0  # from the first measured point, after the warm-up
    assert (result.warmup.seconds, result.warmup.requests) == (1.0, 2)


def test_a_file_without_warm_up_points_has_no_warm_up_even_when_asked():
    result = parse(
        warmed_up_run().replace(b'"perfgate_phase":"warmup"', b'"other":"x"'),
        warmup_tag=("perfgate_phase", "warmup"),
    )
    assert result.warmup is None and result.series["http_reqs"].values["count"] == 7
