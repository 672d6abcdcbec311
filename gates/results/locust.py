"""Locust results: the ``--csv PREFIX`` stats file and the ``--json`` stats list.

Both map onto k6's names: ``http_req_duration`` (trend, ms), ``http_reqs`` (counter) and
``http_req_failed`` (rate; ``passes`` = failed requests, as in k6), for the whole run (no tags)
and per request with tags ``{"name": …, "method": …}``.

The CSV is already aggregated: its columns map to ``med, avg, min, max, p(N)``, ``count`` and
``rate``. The JSON carries each request's response-time histogram (response times rounded to
about two significant digits, ``{"150": 12, …}``), so percentiles of any request, of the whole
run and of any ``name``/``method`` submetric are computed from it exactly as Locust computes
them itself (``calculate_response_time_percentile`` and the clamped median).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from typing import Any, BinaryIO

from gates.results.base import COUNTER, RATE, TREND, ParseError, ResultSet, Series, Tags, normalize_tags
from gates.results.common import bounded_lines, describe, is_number, number_text
from gates.results.k6 import load_json
from gates.results.trend import DEFAULT_PERCENTILES, percentile_key

HTTP_METRICS = ("http_req_duration", "http_reqs", "http_req_failed")
_CSV_REQUIRED = (
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Requests/s",
)
_PERCENT_COLUMN = re.compile(r"(\d+(?:\.\d+)?)%\Z")


def _request_tags(name: str, method: str | None) -> Tags:
    return normalize_tags({"name": name, "method": method} if method else {"name": name})


def _failed_series(tags: Tags, requests: int, failures: int) -> Series:
    values = {"passes": float(failures), "fails": float(requests - failures)}
    if requests:
        values = {"rate": failures / requests, **values}
    return Series("http_req_failed", RATE, "", tags, samples=requests, values=values)


def parse_locust_csv(stream: BinaryIO, *, source: str = "<results>") -> ResultSet:
    """Parse Locust's ``PREFIX_stats.csv`` (columns found by header name, in any order)."""
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")
    reader = csv.reader(bounded_lines(text.readline, source=source))
    try:
        header = next(reader, None)
        if header is None:
            raise ParseError("the file is empty; expected Locust's stats CSV header", source=source)
        header = [column.lstrip("\ufeff").strip() for column in header]
        missing = [column for column in _CSV_REQUIRED if column not in header]
        if missing:
            raise ParseError(
                f"missing required column(s) {', '.join(repr(c) for c in missing)}; "
                f"expected Locust's stats CSV header",
                source=source,
                line=1,
            )
        column = {name: index for index, name in enumerate(header)}
        percent_columns = []
        for index, name in enumerate(header):
            match = _PERCENT_COLUMN.match(name)
            if match:
                percent_columns.append((index, percentile_key(float(match.group(1)))))

        result = ResultSet(tool="locust", format="locust-csv")
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ParseError(
                    f"expected {len(header)} fields like the header, got {len(row)}", source=source, line=line
                )

            def number(name: str, *, whole: bool = False, row=row, line=line) -> float:
                cell = row[column[name]].strip()
                value = number_text(cell)
                if value is None or (whole and (value < 0 or value != int(value))):
                    expected = "a whole, non-negative number" if whole else "a number"
                    raise ParseError(
                        f"expected {expected}, got {cell!r}", source=source, line=line, field=name
                    )
                return value

            name, method = row[column["Name"]], row[column["Type"]]
            requests = int(number("Request Count", whole=True))
            failures = int(number("Failure Count", whole=True))
            if failures > requests:
                raise ParseError(
                    f"more failures ({failures}) than requests ({requests})",
                    source=source,
                    line=line,
                    field="Failure Count",
                )
            rate = number("Requests/s")
            aggregated = name == "Aggregated" and not method
            tags = () if aggregated else _request_tags(name, method)

            duration = {"count": float(requests)}
            if requests:
                duration = {
                    "avg": number("Average Response Time"),
                    "min": number("Min Response Time"),
                    "med": number("Median Response Time"),
                    "max": number("Max Response Time"),
                }
                for index, key in percent_columns:
                    cell = row[index].strip()
                    if cell == "N/A":
                        continue
                    value = number_text(cell)
                    if value is None:
                        raise ParseError(
                            f"expected a number or N/A, got {cell!r}",
                            source=source,
                            line=line,
                            field=header[index],
                        )
                    duration[key] = value
                duration["count"] = float(requests)
            result.add(Series("http_req_duration", TREND, "ms", tags, samples=requests, values=duration))
            result.add(
                Series(
                    "http_reqs",
                    COUNTER,
                    "",
                    tags,
                    samples=requests,
                    values={"count": float(requests), "rate": rate},
                )
            )
            result.add(_failed_series(tags, requests, failures))
            if aggregated and rate > 0:
                # Locust's Requests/s is requests over the run's duration.
                result.duration_seconds = requests / rate
    except csv.Error as exc:
        raise ParseError(f"malformed CSV: {exc}", source=source, line=reader.line_num) from None
    finally:
        text.detach()
    if "http_reqs" not in result.series:
        raise ParseError("no 'Aggregated' row: the stats of the whole run are missing", source=source)
    return result


class _Entry:
    """One Locust stats entry (or several merged, like Locust's own total)."""

    def __init__(self):
        self.requests = 0
        self.none_requests = 0
        self.failures = 0
        self.total_response_time = 0.0
        self.min_response_time: float | None = None
        self.max_response_time = 0.0
        self.histogram: dict[float, int] = {}

    def extend(self, other: _Entry) -> None:
        self.requests += other.requests
        self.none_requests += other.none_requests
        self.failures += other.failures
        self.total_response_time += other.total_response_time
        if other.min_response_time is not None:
            self.min_response_time = (
                other.min_response_time
                if self.min_response_time is None
                else min(self.min_response_time, other.min_response_time)
            )
        self.max_response_time = max(self.max_response_time, other.max_response_time)
        for bucket, count in other.histogram.items():
            self.histogram[bucket] = self.histogram.get(bucket, 0) + count

    def percentile(self, timed: int, fraction: float) -> float:
        """Locust's ``calculate_response_time_percentile``."""
        wanted = int(timed * fraction)
        processed = 0
        for bucket in sorted(self.histogram, reverse=True):
            processed += self.histogram[bucket]
            if timed - processed <= wanted:
                return bucket
        return 0.0

    def duration_values(self, percentiles: Iterable[float]) -> tuple[int, dict[str, float]]:
        timed = self.requests - self.none_requests
        if timed <= 0:
            return 0, {"count": 0.0}
        median = self.percentile(timed, 0.5)
        # Locust clamps the median, whose buckets are rounded, to the exact min and max.
        median = min(median, self.max_response_time)
        if self.min_response_time is not None:
            median = max(median, self.min_response_time)
        values = {
            "avg": self.total_response_time / timed,
            "min": self.min_response_time or 0.0,
            "med": median,
            "max": self.max_response_time,
        }
        for percent in percentiles:
            values[percentile_key(percent)] = self.percentile(timed, percent / 100.0)
        values["count"] = float(timed)
        return timed, values

    def series(self, metric: str, tags: Tags, percentiles: Iterable[float], duration: float | None) -> Series:
        if metric == "http_req_duration":
            samples, values = self.duration_values(percentiles)
            return Series(metric, TREND, "ms", tags, samples=samples, values=values)
        if metric == "http_reqs":
            values = {"count": float(self.requests)}
            if duration:
                values["rate"] = self.requests / duration
            return Series(metric, COUNTER, "", tags, samples=self.requests, values=values)
        return _failed_series(tags, self.requests, self.failures)


def _json_entry(raw: Any, index: int, source: str) -> tuple[Tags, _Entry, float | None, float | None]:
    where = f"[{index}]"
    if not isinstance(raw, dict):
        raise ParseError(f"expected a stats entry object, got {describe(raw)}", source=source, field=where)

    def number(key: str, *, optional: bool = False, whole: bool = False) -> float | None:
        value = raw.get(key)
        if value is None and optional:
            return None
        if not is_number(value) or (whole and (value < 0 or value != int(value))):
            expected = "a whole, non-negative number" if whole else "a number"
            raise ParseError(
                f"expected {expected}, got {describe(value)}", source=source, field=f"{where}.{key}"
            )
        return value

    name = raw.get("name")
    if not isinstance(name, str):
        raise ParseError(
            f"expected a request name, got {describe(name)}", source=source, field=f"{where}.name"
        )
    method = raw.get("method")
    if method is not None and not isinstance(method, str):
        raise ParseError(
            f"expected a method name or null, got {describe(method)}", source=source, field=f"{where}.method"
        )
    entry = _Entry()
    entry.requests = int(number("num_requests", whole=True))
    entry.none_requests = int(number("num_none_requests", optional=True, whole=True) or 0)
    entry.failures = int(number("num_failures", whole=True))
    entry.total_response_time = float(number("total_response_time"))
    low = number("min_response_time", optional=True)
    entry.min_response_time = None if low is None else float(low)
    entry.max_response_time = float(number("max_response_time"))
    histogram = raw.get("response_times")
    if not isinstance(histogram, dict):
        raise ParseError(
            f"expected an object of response time buckets, got {describe(histogram)}",
            source=source,
            field=f"{where}.response_times",
        )
    for bucket, count in histogram.items():
        field = f"{where}.response_times.{bucket}"
        rounded = number_text(bucket)
        if rounded is None:
            raise ParseError(
                f"expected a response time in ms as the key, got {bucket!r}", source=source, field=field
            )
        if not is_number(count) or count < 0 or count != int(count):
            raise ParseError(
                f"expected a whole, non-negative count, got {describe(count)}", source=source, field=field
            )
        entry.histogram[rounded] = entry.histogram.get(rounded, 0) + int(count)
    start = number("start_time", optional=True)
    end = number("last_request_timestamp", optional=True)
    return _request_tags(name, method), entry, start, end


def parse_locust_json(
    data: bytes,
    *,
    source: str = "<results>",
    submetrics: Iterable[tuple[str, Tags]] = (),
    percentiles: Iterable[float] = (),
) -> ResultSet:
    """Parse the JSON list ``locust --json`` prints (or ``--json-file`` writes)."""
    document = load_json(data, source=source)
    if not isinstance(document, list):
        raise ParseError(f"expected a list of Locust stats entries, got {describe(document)}", source=source)
    wanted = sorted({*DEFAULT_PERCENTILES, *percentiles})
    entries: list[tuple[Tags, _Entry]] = []
    starts, ends = [], []
    for index, raw in enumerate(document):
        tags, entry, start, end = _json_entry(raw, index, source)
        entries.append((tags, entry))
        if start is not None:
            starts.append(start)
        if end is not None:
            ends.append(end)
    # Locust's rates divide by the run's duration: first start to last request, over all entries.
    duration = max(ends) - min(starts) if starts and ends and max(ends) > min(starts) else None

    result = ResultSet(tool="locust", format="locust-json", duration_seconds=duration)
    total = _Entry()
    for _, entry in entries:
        total.extend(entry)
    groups: list[tuple[Tags, _Entry]] = [((), total)]
    merged: dict[Tags, _Entry] = {}
    for tags, entry in entries:
        merged.setdefault(tags, _Entry()).extend(entry)
    groups += merged.items()
    for tags, entry in groups:
        for metric in HTTP_METRICS:
            result.add(entry.series(metric, tags, wanted, duration))

    for metric, tags in submetrics:
        if metric not in HTTP_METRICS or not tags:
            continue
        selected = _Entry()
        for entry_tags, entry in entries:
            if set(tags) <= set(entry_tags):
                selected.extend(entry)
        result.add(selected.series(metric, normalize_tags(tags), wanted, duration))
    return result
