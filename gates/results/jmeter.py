"""JMeter JTL results in CSV, streamed, with exact percentiles.

The columns are found by the header JMeter writes (``jmeter.save.saveservice.print_field_names``):
only ``timeStamp`` (ms since the epoch, ``jmeter.save.saveservice.timestamp_format=ms``, the
default), ``elapsed`` (ms), ``label`` and ``success`` are required; the others may be missing or
in any order. Every row is one sample:

- ``http_req_duration`` (trend, ms) from ``elapsed``, percentiles as k6 computes them;
- ``http_reqs`` (counter) and ``http_req_failed`` (rate; ``passes`` = failed samples, as in k6);
- ``data_received`` / ``data_sent`` (counters, bytes) when ``bytes`` / ``sentBytes`` are present;

for the whole run and per label (tag ``name``; JTL does not record the HTTP method). Requested
submetrics of the three HTTP metrics may also filter on ``status`` (the ``responseCode`` column).

``timeStamp`` is the start of a sample (``sampleresult.timestamp.start=true`` in the
``jmeter.properties`` JMeter ships), so the run lasts from the first ``timeStamp`` to the last
``timeStamp + elapsed``. Transaction-controller parent samples, when saved, count as samples.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import BinaryIO

from gates.results.base import COUNTER, RATE, TREND, ParseError, ResultSet, Series, Tags, normalize_tags
from gates.results.common import bounded_lines, number_text
from gates.results.trend import DEFAULT_PERCENTILES, Trend, TrendStore

REQUIRED_COLUMNS = ("timeStamp", "elapsed", "label", "success")
HTTP_METRICS = ("http_req_duration", "http_reqs", "http_req_failed")
_BOOLEANS = {"true": True, "false": False}
_LATEST_MILLIS = 10**14  # the year 5138: anything later is not a JMeter timestamp


class _Requests:
    """Samples of one label, of the whole run, or of one requested submetric."""

    __slots__ = ("append", "count", "failures", "tags", "trend")

    def __init__(self, tags: Tags, store: TrendStore):
        self.tags = tags
        self.trend: Trend = store.new_trend()
        self.append = self.trend.values.append
        self.count = 0
        self.failures = 0

    def series(
        self, metric: str, store: TrendStore, percentiles: Iterable[float], duration: float | None
    ) -> Series:
        if metric == "http_req_duration":
            return Series(
                metric,
                TREND,
                "ms",
                self.tags,
                samples=self.count,
                values=store.statistics(self.trend, percentiles),
            )
        if metric == "http_reqs":
            values = {"count": float(self.count)}
            if duration:
                values["rate"] = self.count / duration
            return Series(metric, COUNTER, "", self.tags, samples=self.count, values=values)
        values = {"passes": float(self.failures), "fails": float(self.count - self.failures)}
        if self.count:
            values = {"rate": self.failures / self.count, **values}
        return Series(metric, RATE, "", self.tags, samples=self.count, values=values)


def parse_jtl(
    stream: BinaryIO,
    *,
    source: str = "<results>",
    submetrics: Iterable[tuple[str, Tags]] = (),
    percentiles: Iterable[float] = (),
    store: TrendStore | None = None,
) -> ResultSet:
    """Parse a JMeter CSV JTL stream. ``submetrics`` are parsed selectors ``(metric, tags)``;
    a ``store`` may be passed to choose the trend memory budget (the caller then closes it)."""
    owned = store is None
    if store is None:
        store = TrendStore()
    # JMeter writes the platform encoding; undecodable bytes only ever reach labels and messages.
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")
    reader = csv.reader(bounded_lines(text.readline, source=source))
    try:
        return _parse(reader, source, submetrics, sorted({*DEFAULT_PERCENTILES, *percentiles}), store)
    except csv.Error as exc:
        raise ParseError(f"malformed CSV: {exc}", source=source, line=reader.line_num) from None
    finally:
        text.detach()
        if owned:
            store.close()


def _parse(
    reader, source: str, submetrics: Iterable[tuple[str, Tags]], percentiles: list[float], store: TrendStore
) -> ResultSet:
    header = next(reader, None)
    if header is None:
        raise ParseError(
            "the file is empty; expected a JTL header line (timeStamp,elapsed,label,…)", source=source
        )
    header = [column.lstrip("\ufeff").strip() for column in header]
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise ParseError(
            f"missing required column(s) {', '.join(repr(c) for c in missing)} "
            f"in the JTL header (it has {', '.join(header[:20])})",
            source=source,
            line=1,
        )
    column = {name: index for index, name in enumerate(header)}
    at_time, at_elapsed, at_label, at_success = (column[name] for name in REQUIRED_COLUMNS)
    at_code = column.get("responseCode")
    at_received = column.get("bytes")
    at_sent = column.get("sentBytes")
    width = len(header)

    overall = _Requests((), store)
    labels: dict[str, _Requests] = {}
    # Requested submetrics that a label's own series does not already answer.
    extra: list[tuple[Tags, _Requests]] = []
    for metric, tags in submetrics:
        answered_by_labels = {key for key, _ in tags} <= {"name"}
        if metric in HTTP_METRICS and not answered_by_labels and all(known != tags for known, _ in extra):
            extra.append((tags, _Requests(tags, store)))
    received = sent = 0.0
    first_start: int | None = None
    last_end = 0.0
    fanout = 2 + len(extra)  # overall, its label, and each extra submetric
    countdown = 0

    for row in reader:
        line = reader.line_num
        if len(row) != width:
            if not any(cell.strip() for cell in row):
                continue
            raise ParseError(
                f"expected {width} fields like the header, got {len(row)}", source=source, line=line
            )
        if not countdown:
            countdown = store.reserve(fanout)
        countdown -= 1

        stamp = row[at_time]
        try:
            started = int(stamp)
        except ValueError:
            started = -1
        if not 0 <= started < _LATEST_MILLIS:
            raise ParseError(
                f"expected milliseconds since the epoch (timestamp_format=ms), got {stamp!r}",
                source=source,
                line=line,
                field="timeStamp",
            )
        elapsed = number_text(row[at_elapsed])
        if elapsed is None:
            raise ParseError(
                f"expected a number of milliseconds, got {row[at_elapsed]!r}",
                source=source,
                line=line,
                field="elapsed",
            )
        success = _BOOLEANS.get(row[at_success].strip().lower())
        if success is None:
            raise ParseError(
                f"expected true or false, got {row[at_success]!r}", source=source, line=line, field="success"
            )
        if at_received is not None or at_sent is not None:
            for index, name in ((at_received, "bytes"), (at_sent, "sentBytes")):
                if index is None:
                    continue
                amount = number_text(row[index]) if row[index].strip() else 0.0
                if amount is None:
                    raise ParseError(
                        f"expected a number of bytes, got {row[index]!r}",
                        source=source,
                        line=line,
                        field=name,
                    )
                if index == at_received:
                    received += amount
                else:
                    sent += amount

        label = row[at_label]
        requests = labels.get(label)
        if requests is None:
            requests = labels[label] = _Requests(normalize_tags({"name": label}), store)
        failed = not success
        for each in (overall, requests):
            each.append(elapsed)
            each.count += 1
            each.failures += failed
        if extra:
            tags = {"name": label}
            if at_code is not None:
                tags["status"] = row[at_code]
            for wanted, each in extra:
                if all(tags.get(key) == value for key, value in wanted):
                    each.append(elapsed)
                    each.count += 1
                    each.failures += failed

        if first_start is None or started < first_start:
            first_start = started
        if started + elapsed > last_end:
            last_end = started + elapsed

    duration = (last_end - first_start) / 1000.0 if first_start is not None else None
    result = ResultSet(tool="jmeter", format="jmeter-jtl", duration_seconds=duration)
    for requests in (overall, *labels.values(), *(each for _, each in extra)):
        for metric in HTTP_METRICS:
            result.add(requests.series(metric, store, percentiles, duration))
    # A requested label that never appeared: a series with zero samples, so that a rule on it
    # reports missing data.
    seen_labels = {requests.tags for requests in labels.values()}
    for metric, tags in submetrics:
        if metric in HTTP_METRICS and {key for key, _ in tags} == {"name"} and tags not in seen_labels:
            result.add(_Requests(tags, store).series(metric, store, percentiles, duration))
    for name, amount, column_name in (("data_received", received, at_received), ("data_sent", sent, at_sent)):
        if column_name is not None:
            values = {"count": amount}
            if duration:
                values["rate"] = amount / duration
            result.add(Series(name, COUNTER, "bytes", (), samples=overall.count, values=values))
    return result
