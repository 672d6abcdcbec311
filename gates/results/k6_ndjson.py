"""k6 ``--out json`` NDJSON: every metric recomputed exactly from the raw points, streamed.

A file has one JSON object per line: ``{"type":"Metric", "data":{name, type, contains,
thresholds, submetrics}}`` declares a metric, ``{"type":"Point", "metric":…, "data":{time, value,
tags}}`` is one sample. Files reach many GB, so lines are read one at a time and memory does not
grow with the file: trend values go to a :class:`~gates.results.trend.TrendStore`, which spills
sorted runs to a temporary file beyond its budget; counters, rates and gauges are running sums.

Series produced, for every metric and for every submetric (those declared in the file's Metric
lines plus those the caller asks for; a point belongs to a submetric when its tags include all of
the submetric's tags, as in k6):

- trend: ``avg, min, med, max, p(90), p(95), p(99)`` (+ requested percentiles), ``count``;
- counter: ``count`` and ``rate`` (count per second of the run, first to last point);
- rate: ``rate, passes, fails`` (passes = non-zero values; for ``http_req_failed`` the failures);
- gauge: ``value`` (the last one read), ``min, max``.

``samples`` is the number of points. A metric with no Metric line takes its kind from k6's
built-in metrics, or else is read as a trend: every sample is kept, so count and distribution stay
exact whatever the metric really was. Unknown line types are skipped; blank lines are allowed.

A warm-up can be left out: with ``warmup_tag=(key, value)``, points whose tags hold that pair
(k6 adds a scenario's tags to its samples; perfgate's warm-up scenario carries one) count only
towards :attr:`ResultSet.warmup`: its length and its ``http_reqs``. The run's duration (for
counter rates) then starts where the warm-up ends. Points without tags (k6's ``vus`` and
``vus_max`` gauges) are kept as they are.

Timestamps are not parsed per line: within one UTC offset, RFC 3339 strings without their offset
suffix sort in time order (a shorter fraction is a prefix, so ``.1`` sorts before ``.15``), so only
the smallest and the largest are parsed, at the end. Lines with another offset (a DST change, files
of several machines concatenated) are tracked per offset and compared after parsing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

import orjson

from gates.results.base import (
    COUNTER,
    METRIC_KINDS,
    RATE,
    TREND,
    ParseError,
    ResultSet,
    Series,
    Tags,
    Warmup,
    normalize_tags,
)
from gates.results.common import BUILTIN_METRICS, MAX_LINE_BYTES, UNITS, describe, is_number
from gates.results.trend import DEFAULT_PERCENTILES, TrendStore

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})\Z")
_NO_ZONE = "\x00"  # never ends a timestamp: sends the first point through the careful path
_EMPTY: dict = {}
# The kind constants themselves, so that the hot loop can compare with ``is``.
_KINDS = {kind: kind for kind in METRIC_KINDS}


class _Slow(Exception):
    """Raised inside the hot loop: this line needs the careful path."""


class _Series:
    """Running state of one metric or submetric."""

    __slots__ = (
        "append",
        "high",
        "kind",
        "last",
        "low",
        "metric",
        "passes",
        "points",
        "subs",
        "tags",
        "total",
        "trend",
        "unit",
    )

    def __init__(self, metric: str, kind: str, unit: str, tags: Tags, store: TrendStore):
        self.metric = metric
        self.kind = kind
        self.unit = unit
        self.tags = tags  # a point belongs to this (sub)metric when its tags include all of these
        self.trend = store.new_trend() if kind == TREND else None
        self.append = self.trend.values.append if self.trend is not None else None
        self.total = 0.0
        self.points = 0
        self.passes = 0
        self.last = self.low = self.high = 0.0
        self.subs: list[_Series] = []

    def add(self, value: float) -> None:
        """One point, on the careful path; the hot loop in :func:`parse_k6_ndjson` inlines this."""
        kind = self.kind
        if kind == TREND:
            self.append(value)
        elif kind == COUNTER:
            self.total += value
            self.points += 1
        elif kind == RATE:
            self.points += 1
            if value:
                self.passes += 1
        else:
            if not self.points or value < self.low:
                self.low = value
            if not self.points or value > self.high:
                self.high = value
            self.last = value
            self.points += 1

    def matches(self, tags: dict) -> bool:
        return all(tags.get(key) == value for key, value in self.tags)

    def series(self, store: TrendStore, percentiles: Iterable[float], duration: float | None) -> Series:
        if self.kind == TREND:
            values = store.statistics(self.trend, percentiles)
            samples = self.trend.count
        elif self.kind == COUNTER:
            values = {"count": self.total}
            if duration:
                values["rate"] = self.total / duration
            samples = self.points
        elif self.kind == RATE:
            values = {"passes": float(self.passes), "fails": float(self.points - self.passes)}
            if self.points:
                values = {"rate": self.passes / self.points, **values}
            samples = self.points
        else:
            values = {"value": self.last, "min": self.low, "max": self.high} if self.points else {}
            samples = self.points
        return Series(
            metric=self.metric, kind=self.kind, unit=self.unit, tags=self.tags, samples=samples, values=values
        )


def _zone_of(when: str) -> tuple[str, int] | None:
    """The UTC offset suffix of an RFC 3339 timestamp and where it starts (negative index)."""
    if when.endswith("Z"):
        return "Z", -1
    if len(when) > 6 and when[-6] in "+-" and when[-3] == ":":
        return when[-6:], -6
    return None


def _nanoseconds(when: str) -> int | None:
    """An RFC 3339 timestamp with up to nanosecond precision as integer ns since the epoch."""
    match = _TIMESTAMP.match(when)
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    try:
        moment = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    return seconds * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0"))


class _Clock:
    """The first and last point time, as described in the module docstring."""

    __slots__ = ("cut", "first", "first_line", "last", "last_line", "others", "source", "zone")

    def __init__(self, source: str):
        self.source = source
        self.zone = _NO_ZONE
        self.cut = -1
        self.first = self.last = ""
        self.first_line = self.last_line = 0
        # other offsets: zone → [first, first line, last, last line]
        self.others: dict[str, list] = {}

    def observe(self, when, line: int) -> None:
        """The careful path for one timestamp; the hot loop inlines the common case."""
        if not isinstance(when, str):
            raise ParseError(
                f"expected an RFC 3339 timestamp, got {describe(when)}",
                source=self.source,
                line=line,
                field="data.time",
            )
        zone = _zone_of(when)
        if zone is None or _nanoseconds(when) is None:
            raise ParseError(
                f"expected an RFC 3339 timestamp, got {describe(when)}",
                source=self.source,
                line=line,
                field="data.time",
            )
        suffix, cut = zone
        key = when[:cut]
        if self.zone == _NO_ZONE:
            self.zone, self.cut = suffix, cut
            self.first = self.last = key
            self.first_line = self.last_line = line
        elif suffix == self.zone:
            if key > self.last:
                self.last, self.last_line = key, line
            elif key < self.first:
                self.first, self.first_line = key, line
        else:
            other = self.others.get(suffix)
            if other is None:
                self.others[suffix] = [key, line, key, line]
            elif key < other[0]:
                other[0], other[1] = key, line
            elif key > other[2]:
                other[2], other[3] = key, line

    def duration(self) -> float | None:
        """Seconds from the first to the last point; None when there were no points."""
        bounds = self.bounds()
        return None if bounds is None else (bounds[1] - bounds[0]) / 1e9

    def bounds(self) -> tuple[int, int] | None:
        """The first and the last point time in ns since the epoch; None when there were none."""
        if self.zone == _NO_ZONE:
            return None
        candidates = [(self.first + self.zone, self.first_line), (self.last + self.zone, self.last_line)]
        for suffix, (first, first_line, last, last_line) in self.others.items():
            candidates += [(first + suffix, first_line), (last + suffix, last_line)]
        moments = []
        for when, line in candidates:
            ns = _nanoseconds(when)
            if ns is None:
                raise ParseError(
                    f"expected an RFC 3339 timestamp, got {describe(when)}",
                    source=self.source,
                    line=line,
                    field="data.time",
                )
            moments.append(ns)
        return min(moments), max(moments)


class _Parser:
    def __init__(
        self,
        source: str,
        submetrics: Iterable[tuple[str, Tags]],
        store: TrendStore,
        warmup_tag: tuple[str, str] | None = None,
    ):
        self.source = source
        self.store = store
        self.metrics: dict[str, _Series] = {}
        self.clock = _Clock(source)
        self.warmup_tag = warmup_tag
        self.warmup_clock = _Clock(source)  # the warm-up's points, kept out of ``clock``
        self.warmup_requests = 0.0
        self.wanted: dict[str, list[Tags]] = {}
        for metric, tags in submetrics:
            if tags and tags not in self.wanted.setdefault(metric, []):
                self.wanted[metric].append(tags)
        self.fanout = 1  # most trend values one line can append: a trend and its submetrics
        self.lines = 0
        self.careful_lines = 0  # non-blank lines that took the careful path

    def _error(self, message: str, line: int, field: str | None = None) -> ParseError:
        return ParseError(message, source=self.source, line=line, field=field)

    def _create(self, metric: str, kind: str, unit: str) -> _Series:
        state = _Series(metric, kind, unit, (), self.store)
        self.metrics[metric] = state
        for tags in self.wanted.get(metric, ()):
            self._add_sub(state, tags)
        return state

    def _add_sub(self, state: _Series, tags: Tags) -> None:
        if any(sub.tags == tags for sub in state.subs):
            return
        state.subs.append(_Series(state.metric, state.kind, state.unit, tags, self.store))
        if state.kind == TREND and 1 + len(state.subs) > self.fanout:
            self.fanout = 1 + len(state.subs)
            # Lines may now append more values each: make room before this one does.
            self.store.reserve(self.fanout)

    def declare(self, obj: dict, line: int) -> None:
        """A ``"type":"Metric"`` line."""
        data = obj.get("data")
        if not isinstance(data, dict):
            raise self._error(f"expected an object, got {describe(data)}", line, "data")
        metric = data.get("name")
        if not isinstance(metric, str) or not metric:
            raise self._error(f"expected a metric name, got {describe(metric)}", line, "data.name")
        kind = _KINDS.get(data.get("type")) if isinstance(data.get("type"), str) else None
        if kind is None:
            raise self._error(
                f"expected one of {', '.join(METRIC_KINDS)}, got {describe(data.get('type'))}",
                line,
                "data.type",
            )
        contains = data.get("contains", "default")
        if not isinstance(contains, str):
            raise self._error(f"expected a string, got {describe(contains)}", line, "data.contains")
        submetrics = data.get("submetrics") or []
        if not isinstance(submetrics, list):
            raise self._error(f"expected a list, got {describe(submetrics)}", line, "data.submetrics")
        declared = []
        for index, submetric in enumerate(submetrics):
            field = f"data.submetrics[{index}].tags"
            tags = submetric.get("tags") if isinstance(submetric, dict) else None
            if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
                raise self._error(f"expected an object of tag values, got {describe(tags)}", line, field)
            declared.append(normalize_tags(tags))

        state = self.metrics.get(metric)
        if state is None:
            state = self._create(metric, kind, UNITS.get(contains, ""))
        elif state.kind != kind:
            raise self._error(
                f"metric {metric!r} is declared as a {kind} after being read as a {state.kind}",
                line,
                "data.type",
            )
        else:
            # A point may have come first and guessed the unit.
            for each in (state, *state.subs):
                each.unit = UNITS.get(contains, "")
        has_points = state.points or (state.trend is not None and state.trend.count)
        for tags in declared:
            # A submetric declared after its metric already has points (files of different
            # scripts concatenated) could only be computed from part of the data: it is left out.
            if tags and not has_points:
                self._add_sub(state, tags)

    def point(self, obj: dict, line: int) -> None:
        """A ``"type":"Point"`` line, on the careful path: validates everything first."""
        metric = obj.get("metric")
        if not isinstance(metric, str) or not metric:
            raise self._error(f"expected a metric name, got {describe(metric)}", line, "metric")
        data = obj.get("data")
        if not isinstance(data, dict):
            raise self._error(f"expected an object, got {describe(data)}", line, "data")
        value = data.get("value")
        if not is_number(value):
            raise self._error(f"expected a number, got {describe(value)}", line, "data.value")
        tags = data.get("tags")
        if tags is None:
            tags = _EMPTY
        elif not isinstance(tags, dict):
            raise self._error(f"expected an object of tags, got {describe(tags)}", line, "data.tags")
        state = self.metrics.get(metric)
        if state is None:
            kind, contains = BUILTIN_METRICS.get(metric, (TREND, "default"))
            state = self._create(metric, kind, UNITS[contains])
        value = float(value)
        warmup = self.warmup_tag
        if warmup is not None and tags.get(warmup[0]) == warmup[1]:
            self.warmup_clock.observe(data.get("time"), line)
            if metric == "http_reqs":
                self.warmup_requests += value
            return
        self.clock.observe(data.get("time"), line)
        state.add(value)
        for sub in state.subs:
            if sub.matches(tags):
                sub.add(value)

    def careful(self, line_bytes: bytes, line: int) -> None:
        """Everything the hot loop does not handle: declarations, blank lines, bad lines."""
        if not line_bytes.strip():
            return
        self.careful_lines += 1
        if len(line_bytes) >= MAX_LINE_BYTES and not line_bytes.endswith(b"\n"):
            raise self._error(f"line longer than {MAX_LINE_BYTES >> 20} MiB: not k6 NDJSON", line)
        try:
            obj = orjson.loads(line_bytes)
        except orjson.JSONDecodeError as exc:
            raise self._error(f"expected a JSON object, got invalid JSON: {exc.msg}", line) from None
        if not isinstance(obj, dict):
            raise self._error(f"expected a JSON object, got {describe(obj)}", line)
        kind = obj.get("type")
        if kind == "Point":
            self.point(obj, line)
        elif kind == "Metric":
            self.declare(obj, line)
        elif not isinstance(kind, str):
            raise self._error(f'expected "Metric" or "Point", got {describe(kind)}', line, "type")
        # Other line types (none in k6 today) carry nothing perfgate computes: skipped.

    def run(self, stream: BinaryIO) -> None:
        """The hot loop. Every line that is not a plain point of a known metric, with the
        timestamp offset seen first, goes to :meth:`careful`; the rest is inlined here because
        per-line Python work is what limits throughput."""
        loads = orjson.loads
        metrics = self.metrics
        clock = self.clock
        store = self.store
        warmup_clock = self.warmup_clock
        warmup_key, warmup_value = self.warmup_tag or (None, None)
        countdown = 0
        line = 0
        readline = functools.partial(stream.readline, MAX_LINE_BYTES)
        for line, line_bytes in enumerate(iter(readline, b""), 1):
            if not countdown:
                countdown = store.reserve(self.fanout)
            countdown -= 1
            try:
                obj = loads(line_bytes)
                if obj["type"] != "Point":
                    raise _Slow
                state = metrics[obj["metric"]]
                data = obj["data"]
                value = data["value"]
                cls = value.__class__
                if cls is not float and cls is not int:
                    raise _Slow
                when = data["time"]
                at = clock  # a warm-up point moves the warm-up's clock, and counts nowhere else
                if warmup_key is not None:
                    tags = data["tags"]
                    if tags.__class__ is dict and tags.get(warmup_key) == warmup_value:
                        at = warmup_clock
                if not when.endswith(at.zone):
                    raise _Slow
                key = when[: at.cut]
                if key > at.last:
                    at.last = key
                    at.last_line = line
                elif key < at.first:
                    at.first = key
                    at.first_line = line
                if at is warmup_clock:
                    if obj["metric"] == "http_reqs":
                        self.warmup_requests += value
                    continue
                subs = state.subs
                if subs:
                    tags = data["tags"]
                    if tags.__class__ is not dict:
                        raise _Slow
                kind = state.kind
                if kind is TREND:
                    state.append(value)
                    for sub in subs:
                        for tag, expected in sub.tags:
                            if tags.get(tag) != expected:
                                break
                        else:
                            sub.append(value)
                elif kind is RATE:
                    state.points += 1
                    if value:
                        state.passes += 1
                    for sub in subs:
                        if sub.matches(tags):
                            sub.points += 1
                            if value:
                                sub.passes += 1
                elif kind is COUNTER:
                    state.total += value
                    state.points += 1
                    for sub in subs:
                        if sub.matches(tags):
                            sub.total += value
                            sub.points += 1
                else:
                    raise _Slow
            except Exception:
                # Only a clock (idempotent) may have changed before a valid line got here.
                # The careful path runs outside this handler so that its ParseError does not
                # carry the hot loop's exception as context.
                fanout = self.fanout
            else:
                continue
            self.careful(line_bytes, line)
            if self.fanout != fanout:
                countdown = store.reserve(self.fanout) - 1
        self.lines = line
        if not self.metrics and not self.careful_lines:
            raise ParseError("the file is empty; expected k6 NDJSON lines", source=self.source)

    def result(self, percentiles: Iterable[float]) -> ResultSet:
        duration = self.clock.duration()
        warmup = self.warmup_clock.bounds()
        measured = self.clock.bounds()
        warmup_summary = None
        if warmup is not None:
            # The run starts with the first point of either kind; the measured part where the
            # warm-up ends.
            started = warmup[0] if measured is None else min(warmup[0], measured[0])
            warmup_summary = Warmup(
                seconds=(warmup[1] - started) / 1e9, requests=int(self.warmup_requests), excluded=True
            )
            if measured is not None:
                duration = max(0, measured[1] - max(measured[0], warmup[1])) / 1e9
        result = ResultSet(tool="k6", format="k6-ndjson", duration_seconds=duration, warmup=warmup_summary)
        for state in self.metrics.values():
            result.add(state.series(self.store, percentiles, duration))
            for sub in state.subs:
                result.add(sub.series(self.store, percentiles, duration))
        # A requested submetric of a built-in metric that never appeared still gets a series,
        # with zero samples, so that a rule on it reports missing data rather than "not found".
        for metric, wanted in self.wanted.items():
            if metric in self.metrics or metric not in BUILTIN_METRICS:
                continue
            kind, contains = BUILTIN_METRICS[metric]
            for tags in wanted:
                empty = _Series(metric, kind, UNITS[contains], tags, self.store)
                result.add(empty.series(self.store, percentiles, duration))
        return result


def parse_k6_ndjson(
    stream: BinaryIO,
    *,
    source: str = "<results>",
    submetrics: Iterable[tuple[str, Tags]] = (),
    percentiles: Iterable[float] = (),
    store: TrendStore | None = None,
    warmup_tag: tuple[str, str] | None = None,
) -> ResultSet:
    """Recompute every metric of a k6 NDJSON stream exactly.

    ``submetrics`` are parsed selectors ``(metric, tags)``; ``percentiles`` are extra ones to
    compute for trends (numbers, 99.9 → ``p(99.9)``). A ``store`` may be passed to choose the memory
    budget or to inspect it afterwards; the caller then closes it. Points tagged ``warmup_tag``
    (a ``(key, value)`` pair) are the warm-up: left out of every number, summarised in
    ``ResultSet.warmup``.
    """
    owned = store is None
    if store is None:
        store = TrendStore()
    try:
        parser = _Parser(source, submetrics, store, warmup_tag)
        parser.run(stream)
        wanted = sorted({*DEFAULT_PERCENTILES, *percentiles})
        return parser.result(wanted)
    finally:
        if owned:
            store.close()
