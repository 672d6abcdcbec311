"""k6's pre-aggregated outputs: the legacy ``--summary-export`` file and ``handleSummary`` JSON.

Both hold what k6 computed at the end of the run; nothing can be recomputed from them, so a
series holds exactly the aggregations the file contains.

``--summary-export`` (legacy) differs from ``handleSummary(data)`` in ways that matter:

- metric kinds are not stated: they are inferred from the keys present (and, when that is
  ambiguous, from k6's built-in metric names);
- a threshold value ``true`` means the threshold was *crossed* (failed);
- a rate metric's ``value`` is the rate and ``passes`` counts non-zero values, so for
  ``http_req_failed`` ``passes`` is the number of *failed* requests (kept as is: k6's convention).

A trend's ``count`` is present only when ``--summary-trend-stats`` asked for it; without it the
number of samples is unknown (``None``), except that a trend whose aggregations are all exactly 0
is k6's rendering of a submetric that received no data, so it gets ``samples = 0``: missing data
must never pass a gate.
"""

from __future__ import annotations

from typing import Any

import orjson

from gates.results.base import COUNTER, GAUGE, METRIC_KINDS, RATE, TREND, ParseError, ResultSet, Series
from gates.results.common import (
    BUILTIN_METRICS,
    MAX_JSON_DEPTH,
    UNITS,
    count_at,
    describe,
    nested_too_deep,
    number_at,
    parse_selector,
)

_GAUGE_KEYS = frozenset({"value", "min", "max"})
_TREND_KEYS = frozenset({"avg", "min", "med", "max", "count"})


def load_json(data: bytes, *, source: str) -> Any:
    """Parse a whole JSON document, turning orjson's error into a ParseError with a position.
    A document nested deeper than any tool writes is refused like invalid JSON."""
    if not data.strip():
        raise ParseError("the file is empty; expected a JSON document", source=source)
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        truncated = " (the file looks truncated)" if "end of data" in exc.msg else ""
        raise ParseError(
            f"invalid JSON{truncated}: {exc.msg} at column {exc.colno}", source=source, line=exc.lineno
        ) from None
    if nested_too_deep(document):
        raise ParseError(
            f"JSON nested more than {MAX_JSON_DEPTH} levels deep (depth limit exceeded)", source=source
        )
    return document


def _object_at(value: Any, *, source: str, field: str) -> dict:
    if not isinstance(value, dict):
        raise ParseError(f"expected an object, got {describe(value)}", source=source, field=field)
    return value


def _numbers(entry: dict, keys, *, source: str, field: str) -> dict[str, float]:
    """The numeric aggregations of one metric; ``null`` (JSON.stringify's NaN) is left out, so a
    rule on it reports missing data instead of reading a number that was never there."""
    values = {}
    for key in keys:
        raw = entry[key]
        if raw is None:
            continue
        values[key] = number_at(raw, source=source, field=f"{field}.{key}")
    return values


def _selector(key: str, *, source: str, field: str) -> tuple[str, tuple]:
    try:
        return parse_selector(key)
    except ValueError as exc:
        raise ParseError(str(exc), source=source, field=field) from None


def _duration(root: dict, *, source: str) -> float | None:
    state = root.get("state")
    if state is None:
        return None
    state = _object_at(state, source=source, field="state")
    millis = state.get("testRunDurationMs")
    if millis is None:
        return None
    return number_at(millis, source=source, field="state.testRunDurationMs") / 1000.0


def _trend_samples(values: dict[str, float], *, source: str, field: str) -> int | None:
    if "count" in values:
        return count_at(values["count"], source=source, field=f"{field}.count")
    if values and all(value == 0 for value in values.values()):
        return 0
    return None


def _rate_samples(values: dict[str, float], *, source: str, field: str) -> int:
    passes = count_at(values["passes"], source=source, field=f"{field}.passes")
    return passes + count_at(values["fails"], source=source, field=f"{field}.fails")


def _infer_kind(metric: str, keys: set[str]) -> str | None:
    """The kind of a summary-export metric, from the keys it has; None when they do not say."""
    if "passes" in keys or "fails" in keys:
        return RATE
    if "value" in keys and keys <= _GAUGE_KEYS:
        return GAUGE
    if "rate" in keys and keys <= {"count", "rate"}:
        return COUNTER
    if keys and all(key in _TREND_KEYS or (key.startswith("p(") and key.endswith(")")) for key in keys):
        return TREND
    if metric in BUILTIN_METRICS:
        return BUILTIN_METRICS[metric][0]
    return None


def parse_summary_export(data: bytes, *, source: str = "<results>") -> ResultSet:
    """Parse ``k6 run --summary-export FILE`` output."""
    root = _object_at(load_json(data, source=source), source=source, field="(document)")
    metrics = _object_at(root.get("metrics"), source=source, field="metrics")
    result = ResultSet(tool="k6", format="k6-summary-export", duration_seconds=_duration(root, source=source))
    for key, entry in metrics.items():
        field = f"metrics.{key}"
        entry = _object_at(entry, source=source, field=field)
        metric, tags = _selector(key, source=source, field=field)
        thresholds = entry.get("thresholds")
        keys = [k for k in entry if k != "thresholds"]
        values = _numbers(entry, keys, source=source, field=field)
        kind = _infer_kind(metric, set(values))
        if kind is None:
            raise ParseError(
                f"cannot tell what kind of metric this is from its keys {sorted(keys)}; "
                "expected trend (avg, med, p(N)…), rate (passes, fails, value), "
                "counter (count, rate) or gauge (value, min, max)",
                source=source,
                field=field,
            )
        unit = UNITS[BUILTIN_METRICS[metric][1]] if metric in BUILTIN_METRICS else ""
        series = Series(metric=metric, kind=kind, unit=unit, tags=tags)
        if kind == RATE:
            # The export calls the rate "value"; handleSummary and perfgate call it "rate".
            if "value" in values:
                series.values["rate"] = values["value"]
            series.values.update({k: values[k] for k in ("passes", "fails") if k in values})
            if "passes" in values and "fails" in values:
                series.samples = _rate_samples(values, source=source, field=field)
        elif kind == TREND:
            series.values = values
            series.samples = _trend_samples(values, source=source, field=field)
        else:
            series.values = values
        result.add(series)
        if thresholds is not None:
            thresholds = _object_at(thresholds, source=source, field=f"{field}.thresholds")
            outcome = {}
            for expression, crossed in thresholds.items():
                if not isinstance(crossed, bool):
                    raise ParseError(
                        f"expected true or false, got {describe(crossed)}",
                        source=source,
                        field=f"{field}.thresholds.{expression}",
                    )
                # In the legacy export, true means the threshold was crossed.
                outcome[expression] = not crossed
            result.tool_thresholds[series.key] = outcome
    return result


def parse_handle_summary(data: bytes, *, source: str = "<results>") -> ResultSet:
    """Parse the JSON a ``handleSummary(data)`` wrote with ``JSON.stringify(data)``."""
    root = _object_at(load_json(data, source=source), source=source, field="(document)")
    metrics = _object_at(root.get("metrics"), source=source, field="metrics")
    result = ResultSet(tool="k6", format="k6-handle-summary", duration_seconds=_duration(root, source=source))
    for key, entry in metrics.items():
        field = f"metrics.{key}"
        entry = _object_at(entry, source=source, field=field)
        metric, tags = _selector(key, source=source, field=field)
        kind = entry.get("type")
        if kind not in METRIC_KINDS:
            raise ParseError(
                f"expected one of {', '.join(METRIC_KINDS)}, got {describe(kind)}",
                source=source,
                field=f"{field}.type",
            )
        contains = entry.get("contains", "default")
        if not isinstance(contains, str):
            raise ParseError(
                f"expected a string, got {describe(contains)}", source=source, field=f"{field}.contains"
            )
        raw_values = _object_at(entry.get("values"), source=source, field=f"{field}.values")
        values = _numbers(raw_values, list(raw_values), source=source, field=f"{field}.values")
        series = Series(metric=metric, kind=kind, unit=UNITS.get(contains, ""), tags=tags, values=values)
        if kind == RATE and "passes" in values and "fails" in values:
            series.samples = _rate_samples(values, source=source, field=f"{field}.values")
        elif kind == TREND:
            series.samples = _trend_samples(values, source=source, field=f"{field}.values")
        result.add(series)
        thresholds = entry.get("thresholds")
        if thresholds is not None:
            thresholds = _object_at(thresholds, source=source, field=f"{field}.thresholds")
            outcome = {}
            for expression, verdict in thresholds.items():
                verdict_field = f"{field}.thresholds.{expression}"
                verdict = _object_at(verdict, source=source, field=verdict_field)
                ok = verdict.get("ok")
                if not isinstance(ok, bool):
                    raise ParseError(
                        f"expected true or false, got {describe(ok)}",
                        source=source,
                        field=f"{verdict_field}.ok",
                    )
                outcome[expression] = ok
            result.tool_thresholds[series.key] = outcome
    return result
