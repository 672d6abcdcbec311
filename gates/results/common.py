"""Small pieces every parser shares: k6 selectors, k6's built-in metrics, number checks.

Pure code, no Django.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

from gates.results.base import (
    COUNTER,
    GAUGE,
    RATE,
    TREND,
    ParseError,
    ResultSet,
    Series,
    Tags,
    normalize_tags,
)

# No tool writes lines anywhere near this long; a file that does is not results, and reading its
# "line" whole would take memory proportional to the file.
MAX_LINE_BYTES = 8 << 20

# Past 2**53 a float no longer counts in ones, and no run measures anything that large: such a
# number is corrupt or hostile, and sums or means over it can overflow to infinity.
MAX_MAGNITUDE = 2**53

# The deepest nesting of lists and objects perfgate reads in any JSON it is sent: results
# documents here, and API bodies, the multipart request part and webhook bodies through
# ``perfgate_site.api``. Real documents stay under ten levels; a few hundred make code that walks
# them recursively (the json module, repr, a serializer's error message) raise RecursionError.
MAX_JSON_DEPTH = 64

# The lengths of the columns a series is stored in (``MetricObservation``, ``BaselineMetric``):
# a longer name would fail on PostgreSQL, which enforces them, after the run was accepted.
MAX_METRIC_CHARS = 200
MAX_SERIES_CHARS = 300
MAX_AGGREGATION_CHARS = 32
# Control characters (NUL above all: PostgreSQL text and JSONB cannot hold it) are in no name a
# tool writes; they are corruption, or an attempt to break what displays or stores the name.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# Aggregations that count things, whatever the metric's kind.
_COUNT_AGGREGATIONS = frozenset({"count", "passes", "fails"})

# k6's "contains" value type → the unit perfgate shows.
UNITS = {"time": "ms", "data": "bytes", "default": ""}

# k6's built-in metrics: (kind, contains). Used when a format does not state a metric's kind
# (the legacy summary export) or a point arrives before its metric's declaration.
BUILTIN_METRICS: dict[str, tuple[str, str]] = {
    "checks": (RATE, "default"),
    "data_received": (COUNTER, "data"),
    "data_sent": (COUNTER, "data"),
    "dropped_iterations": (COUNTER, "default"),
    "group_duration": (TREND, "time"),
    "iteration_duration": (TREND, "time"),
    "iterations": (COUNTER, "default"),
    "vus": (GAUGE, "default"),
    "vus_max": (GAUGE, "default"),
    "http_reqs": (COUNTER, "default"),
    "http_req_blocked": (TREND, "time"),
    "http_req_connecting": (TREND, "time"),
    "http_req_duration": (TREND, "time"),
    "http_req_failed": (RATE, "default"),
    "http_req_receiving": (TREND, "time"),
    "http_req_sending": (TREND, "time"),
    "http_req_tls_handshaking": (TREND, "time"),
    "http_req_waiting": (TREND, "time"),
    "ws_connecting": (TREND, "time"),
    "ws_msgs_received": (COUNTER, "default"),
    "ws_msgs_sent": (COUNTER, "default"),
    "ws_ping": (TREND, "time"),
    "ws_session_duration": (TREND, "time"),
    "ws_sessions": (COUNTER, "default"),
    "grpc_req_duration": (TREND, "time"),
    "grpc_streams": (COUNTER, "default"),
    "grpc_streams_msgs_received": (COUNTER, "default"),
    "grpc_streams_msgs_sent": (COUNTER, "default"),
    "browser_data_received": (COUNTER, "data"),
    "browser_data_sent": (COUNTER, "data"),
    "browser_http_req_duration": (TREND, "time"),
    "browser_http_req_failed": (RATE, "default"),
    "browser_web_vital_cls": (TREND, "default"),
    "browser_web_vital_fcp": (TREND, "time"),
    "browser_web_vital_fid": (TREND, "time"),
    "browser_web_vital_inp": (TREND, "time"),
    "browser_web_vital_lcp": (TREND, "time"),
    "browser_web_vital_ttfb": (TREND, "time"),
}


def parse_selector(text: str) -> tuple[str, Tags]:
    """Split a k6 metric selector into the metric name and its tag filter, as k6 writes them in
    its own output. Lenient on purpose: this reads what a tool wrote; rules that people write are
    checked strictly by ``gates.rules.parse_selector``.

    ``http_req_duration{name:guests,method:GET}`` → ``("http_req_duration", (("method", "GET"),
    ("name", "guests")))``. Follows k6's own ``NewSubmetric``: the value is everything after the
    first colon (group tags such as ``group:::setup`` keep their colons), keys and values are
    trimmed of spaces and quotes, and a key without a value filters on the empty string.
    Raises ``ValueError`` for a selector that is not ``name`` or ``name{…}``.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a metric selector string, got {text!r}")
    text = text.strip()
    metric, brace, rest = text.partition("{")
    metric = metric.strip()
    if not metric:
        raise ValueError(f"expected a metric name before the tags, got {text!r}")
    if not brace:
        if "}" in metric:
            raise ValueError(f"unbalanced '}}' in metric selector {text!r}")
        return metric, ()
    if not rest.endswith("}"):
        raise ValueError(f"expected the tag filter of {text!r} to end with '}}'")
    tags: dict[str, str] = {}
    for pair in rest[:-1].split(","):
        if not pair.strip():
            continue
        key, colon, value = pair.partition(":")
        key = key.strip().strip("\"'").strip()
        if not key:
            raise ValueError(f"expected tag:value pairs in {text!r}, got {pair!r}")
        tags[key] = value.strip().strip("\"'").strip() if colon else ""
    return metric, normalize_tags(tags)


def is_number(value: Any) -> bool:
    """A JSON number: int or float, not a bool (``True`` is an int in Python, not in JSON)."""
    return (type(value) is int or type(value) is float) and not (
        type(value) is float and not math.isfinite(value)
    )


def describe(value: Any) -> str:
    """A short, readable rendering of an unexpected value for an error message."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number_at(value: Any, *, source: str, field: str) -> float:
    """``value`` as a float, or a ParseError naming the JSON field path."""
    if not is_number(value):
        raise ParseError(f"expected a number, got {describe(value)}", source=source, field=field)
    try:
        return float(value)
    except OverflowError:
        raise ParseError(f"number out of range: {describe(value)}", source=source, field=field) from None


def count_at(value: float, *, source: str, field: str) -> int:
    """A count read as a float (JSON has one number type) as an int: whole and not negative."""
    if value < 0 or value != int(value):
        raise ParseError(f"expected a whole, non-negative count, got {value:g}", source=source, field=field)
    return int(value)


def number_text(text: str) -> float | None:
    """A finite float from CSV text, or ``None`` when it is not one."""
    try:
        number = float(text)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def bounded_lines(readline: Callable[[int], str], *, source: str) -> Iterator[str]:
    """The lines of a text stream, refusing one longer than :data:`MAX_LINE_BYTES` characters
    instead of reading it whole."""
    number = 0
    while True:
        line = readline(MAX_LINE_BYTES)
        if not line:
            return
        number += 1
        if len(line) >= MAX_LINE_BYTES and not line.endswith("\n"):
            raise ParseError(
                f"line longer than {MAX_LINE_BYTES >> 20} MiB: not a results file", source=source, line=number
            )
        yield line


def nested_too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether parsed JSON nests lists and objects more than ``limit`` levels deep (``{}`` is one
    level). Walked without recursion, so it answers for any depth."""
    pending = [(value, 1)] if isinstance(value, (dict, list)) else []
    while pending:
        node, depth = pending.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def holds_nul(value: Any) -> bool:
    """Whether parsed JSON has a NUL character (``\\u0000``) in any key or string, which
    PostgreSQL's JSONB refuses. Walked without recursion."""
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            pending.extend(node)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


def _unstorable_name(series: Series) -> str | None:
    """Why the names of ``series`` cannot be stored, or ``None`` when they can."""
    if _CONTROL_CHARACTER.search(series.key):
        return "it holds a control character"
    if len(series.metric) > MAX_METRIC_CHARS:
        return f"a metric name has at most {MAX_METRIC_CHARS} characters"
    if len(series.key) > MAX_SERIES_CHARS:
        return f"a metric name with its tags has at most {MAX_SERIES_CHARS} characters"
    return None


def check_names(result: ResultSet, *, source: str) -> ResultSet:
    """``result`` unchanged, or a ParseError naming the first metric or aggregation name that
    cannot be stored: a control character, or longer than its column."""
    for series in result.series.values():
        problem = _unstorable_name(series)
        if problem is not None:
            raise ParseError(f"impossible metric name {describe(series.key)} ({problem})", source=source)
        for aggregation in series.values:
            if _CONTROL_CHARACTER.search(aggregation) or len(aggregation) > MAX_AGGREGATION_CHARS:
                raise ParseError(
                    f"impossible aggregation name {describe(aggregation)} of {describe(series.key)} "
                    f"(at most {MAX_AGGREGATION_CHARS} characters, no control characters)",
                    source=source,
                )
    return result


def _impossible(series: Series, aggregation: str, value: float) -> str | None:
    """Why ``value`` cannot be what the tool measured, or ``None`` when it can be."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "not a number"
    if not math.isfinite(value):
        return "not a finite number"
    if abs(value) > MAX_MAGNITUDE:
        return "too large to be a measurement (over 2**53)"
    if aggregation in _COUNT_AGGREGATIONS and (value < 0 or value != int(value)):
        return "a count is a whole number, not negative"
    if series.kind == RATE and aggregation == "rate" and not 0 <= value <= 1:
        return "a rate is a fraction from 0 to 1"
    if series.kind == COUNTER and value < 0:
        return "a counter does not go below zero"
    if series.kind == TREND and series.unit == UNITS["time"] and value < 0:
        return "a duration is not negative"
    return None


def _check_amount(value: float | int | None, what: str, *, source: str) -> None:
    if value is None:
        return
    if not math.isfinite(value) or not 0 <= value <= MAX_MAGNITUDE:
        raise ParseError(f"impossible value for {what}: {describe(value)}", source=source)


def check_physical(result: ResultSet, *, source: str) -> ResultSet:
    """``result`` unchanged, or a ParseError naming the first number no load test can produce:
    a negative duration or count, a rate outside [0, 1], a non-finite or overflowing number.

    Checked once on the normalized shape, so every format is held to the same limits; an
    impossible number that reached a verdict could pass a gate it should fail."""
    for series in result.series.values():
        _check_amount(series.samples, f"{series.key} samples", source=source)
        for aggregation, value in series.values.items():
            problem = _impossible(series, aggregation, value)
            if problem is not None:
                raise ParseError(
                    f"impossible value for {series.key} {aggregation}: {describe(value)} ({problem})",
                    source=source,
                )
    _check_amount(result.duration_seconds, "the test duration", source=source)
    if result.warmup is not None:
        _check_amount(result.warmup.seconds, "the warm-up duration", source=source)
        _check_amount(result.warmup.requests, "the warm-up requests", source=source)
    return result
