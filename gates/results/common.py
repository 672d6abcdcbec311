"""Small pieces every parser shares: k6 selectors, k6's built-in metrics, number checks.

Pure code, no Django.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from gates.results.base import COUNTER, GAUGE, RATE, TREND, ParseError, Tags, normalize_tags

# No tool writes lines anywhere near this long; a file that does is not results, and reading its
# "line" whole would take memory proportional to the file.
MAX_LINE_BYTES = 8 << 20

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
