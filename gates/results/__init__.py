"""Load-test results of every supported tool, read into one normalized shape.

    result = parse_results("k6.ndjson", submetrics=["http_req_duration{name:guests}"])
    result.find("http_req_duration", (("name", "guests"),)).values["p(95)"]

Pure code: no Django. Raw formats (k6 NDJSON, JMeter JTL, Locust JSON) are recomputed exactly,
including any requested submetric; pre-aggregated ones (k6 summaries, Locust CSV) hold what the
tool wrote. Bad input raises :class:`ParseError` and nothing else; so does a number no load test
can produce (a negative duration or count, a rate outside [0, 1], one past 2**53), a name that
cannot be stored (a control character, longer than its column) and a JSON document nested more
than 64 levels deep.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable
from typing import BinaryIO

from gates.results.base import ParseError, ResultSet, Series, Tags
from gates.results.common import check_names, check_physical, parse_selector
from gates.results.detect import FORMATS, detect_format, strip_bom
from gates.results.jmeter import parse_jtl
from gates.results.k6 import parse_handle_summary, parse_summary_export
from gates.results.k6_ndjson import parse_k6_ndjson
from gates.results.locust import parse_locust_csv, parse_locust_json

__all__ = ["FORMATS", "ParseError", "ResultSet", "Series", "detect_format", "parse_results", "parse_selector"]

HEAD_BYTES = 64 * 1024
_BUFFER_BYTES = 1 << 20


class _Rewound(io.RawIOBase):
    """The bytes already read for detection, followed by the rest of the stream: detection does
    not need a seekable stream, and nothing is read twice."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._rest.read(len(buffer))
        if not data:
            return 0
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("parse_results() needs a binary stream (open the file with 'rb')")
        buffer[: len(data)] = data
        return len(data)


def _read_head(stream: BinaryIO) -> bytes:
    # A pipe or socket may return fewer bytes than asked for: read until the head is full or EOF.
    parts, size = [], 0
    while size < HEAD_BYTES:
        data = stream.read(HEAD_BYTES - size)
        if not data:
            break
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("parse_results() needs a binary stream (open the file with 'rb')")
        parts.append(bytes(data))
        size += len(data)
    return b"".join(parts)


def _percentiles(percentiles: Iterable[float]) -> list[float]:
    checked = []
    for percent in percentiles:
        value = float(percent)
        if not (math.isfinite(value) and 0 <= value <= 100):
            raise ValueError(f"percentiles are numbers from 0 to 100, got {percent!r}")
        checked.append(value)
    return checked


def _submetrics(submetrics: Iterable[str]) -> list[tuple[str, Tags]]:
    parsed = []
    for selector in submetrics:
        try:
            parsed.append(parse_selector(selector))
        except ValueError as exc:
            raise ValueError(f"submetric {selector!r}: {exc}") from None
    return parsed


def parse_results(
    source: str | os.PathLike | BinaryIO,
    *,
    format: str | None = None,  # noqa: A002
    name: str | None = None,
    submetrics: Iterable[str] = (),
    percentiles: Iterable[float] = (),
    warmup_tag: tuple[str, str] | None = None,
) -> ResultSet:
    """Read a results file or binary stream into a :class:`ResultSet`.

    ``format`` is one of :data:`FORMATS`, detected from the content when omitted. ``name`` is what
    error messages call the file (default: the path, or ``"<results>"``). ``submetrics`` are k6
    selectors the caller needs (``"http_req_duration{name:guests}"``); ``percentiles`` are extra
    trend percentiles for raw formats (99.9 → ``p(99.9)``). ``warmup_tag`` (k6 NDJSON only) is the
    ``(key, value)`` tag of warm-up points, left out of the numbers. Invalid ``format``,
    ``submetrics`` or ``percentiles`` are the caller's mistake (``ValueError``); invalid input is a
    ``ParseError``.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown results format {format!r}; expected one of {', '.join(FORMATS)}")
    wanted_submetrics = _submetrics(submetrics)
    wanted_percentiles = _percentiles(percentiles)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = name or str(path)
        # Unbuffered: the reader built in _parse_stream does the buffering.
        with open(path, "rb", buffering=0) as stream:
            return _parse_stream(stream, format, name, wanted_submetrics, wanted_percentiles, warmup_tag)
    return _parse_stream(
        source, format, name or "<results>", wanted_submetrics, wanted_percentiles, warmup_tag
    )


def _parse_stream(
    stream: BinaryIO,
    fmt: str | None,
    name: str,
    submetrics: list[tuple[str, Tags]],
    percentiles: list[float],
    warmup_tag: tuple[str, str] | None = None,
) -> ResultSet:
    # A BOM (editors on Windows add one) is dropped once here for every format.
    head = strip_bom(_read_head(stream))
    reader: BinaryIO = io.BufferedReader(_Rewound(head, stream), buffer_size=_BUFFER_BYTES)
    if fmt is None:
        if len(head) >= HEAD_BYTES - 3 and head.lstrip()[:1] in (b"{", b"["):
            # The head may cut a JSON document short. NDJSON is recognised from its first line
            # and streamed; any other JSON is a document, read whole anyway, so detection gets
            # all of it.
            try:
                fmt = detect_format(head, name)
            except ParseError:
                fmt = None
            if fmt != "k6-ndjson":
                data = reader.read()
                fmt = detect_format(data, name)
                reader = io.BytesIO(data)
        else:
            fmt = detect_format(head, name)

    result = _parse_format(reader, fmt, name, submetrics, percentiles, warmup_tag)
    return check_names(check_physical(result, source=name), source=name)


def _parse_format(
    reader: BinaryIO,
    fmt: str,
    name: str,
    submetrics: list[tuple[str, Tags]],
    percentiles: list[float],
    warmup_tag: tuple[str, str] | None,
) -> ResultSet:
    if fmt == "k6-ndjson":
        return parse_k6_ndjson(
            reader, source=name, submetrics=submetrics, percentiles=percentiles, warmup_tag=warmup_tag
        )
    if fmt == "jmeter-jtl":
        return parse_jtl(reader, source=name, submetrics=submetrics, percentiles=percentiles)
    if fmt == "locust-csv":
        return parse_locust_csv(reader, source=name)
    data = reader.read()
    if fmt == "locust-json":
        return parse_locust_json(data, source=name, submetrics=submetrics, percentiles=percentiles)
    if fmt == "k6-handle-summary":
        return parse_handle_summary(data, source=name)
    return parse_summary_export(data, source=name)
