"""Which tool wrote a results file, from its first bytes; the file name is only a hint.

Content decides because CI uploads arrive with arbitrary names (``results.json`` may be any of
four formats). The rules:

- k6 NDJSON: the first non-blank line is a JSON object whose ``type`` is ``Metric`` or ``Point``;
- k6 handleSummary: a JSON object whose ``metrics`` entries have ``type`` and ``values``;
- k6 summary export: a JSON object with ``metrics`` whose entries have neither;
- Locust JSON: a JSON list of objects with ``num_requests`` (or an empty list);
- Locust CSV: a header starting ``Type,Name,Request Count``;
- JMeter JTL: a CSV header naming ``timeStamp`` and ``elapsed``.
"""

from __future__ import annotations

import csv
import re

import orjson

from gates.results.base import ParseError

FORMATS = ("k6-summary-export", "k6-handle-summary", "k6-ndjson", "locust-csv", "locust-json", "jmeter-jtl")

_BOM = b"\xef\xbb\xbf"
_KIND_VALUE = re.compile(rb'"type"\s*:\s*"(?:trend|counter|rate|gauge)"')
_VALUES_OBJECT = re.compile(rb'"values"\s*:\s*\{')
_HANDLE_SUMMARY_GROUPS = re.compile(rb'"(?:groups|checks)"\s*:\s*\[')
_EXPORT_GROUPS = re.compile(rb'"(?:groups|checks)"\s*:\s*\{')
_HINTS = {".ndjson": "k6-ndjson", ".jsonl": "k6-ndjson", ".jtl": "jmeter-jtl"}


def strip_bom(data: bytes) -> bytes:
    """The data without the UTF-8 byte order mark some Windows editors put first."""
    return data[len(_BOM) :] if data.startswith(_BOM) else data


def _seen(head: bytes) -> str:
    """The start of the file, as an error message shows it."""
    text = head.strip()[:60]
    return repr(text.decode("utf-8", "replace")) if text else "an empty file"


def _unknown(head: bytes, filename: str | None, detail: str = "") -> ParseError:
    hint = ""
    if filename:
        for suffix, fmt in _HINTS.items():
            if filename.lower().endswith(suffix):
                hint = f"; the name suggests {fmt} but the content does not match it"
    return ParseError(
        f"unrecognised results format{detail}: the file starts with {_seen(head)}{hint}; "
        f"supported formats: {', '.join(FORMATS)}",
        source=filename,
    )


def _classify_document(document) -> str | None:
    if isinstance(document, list):
        if not document or all(isinstance(item, dict) and "num_requests" in item for item in document):
            return "locust-json"
        return None
    if isinstance(document, dict):
        if document.get("type") in ("Metric", "Point"):
            return "k6-ndjson"
        metrics = document.get("metrics")
        if not isinstance(metrics, dict):
            return None
        entries = [entry for entry in metrics.values() if isinstance(entry, dict)]
        if any("type" in entry and "values" in entry for entry in entries):
            return "k6-handle-summary"
        return "k6-summary-export"
    return None


def detect_format(head: bytes, filename: str | None = None) -> str:
    """The format of a results file from its first bytes (a few KB are enough; the whole file
    is better for JSON documents). Raises ParseError saying what the file starts with."""
    if not isinstance(head, (bytes, bytearray)):
        raise TypeError("detect_format() expects the first bytes of the file")
    head = strip_bom(bytes(head))
    stripped = head.lstrip()
    if not stripped:
        raise ParseError(f"the file is empty; expected one of: {', '.join(FORMATS)}", source=filename)

    if stripped[:1] in (b"{", b"["):
        first_line = stripped.split(b"\n", 1)[0]
        try:
            first = orjson.loads(first_line)
        except orjson.JSONDecodeError:
            first = None
        if isinstance(first, dict) and first.get("type") in ("Metric", "Point"):
            return "k6-ndjson"
        try:
            document = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            document = None
        else:
            fmt = _classify_document(document)
            if fmt is None:
                raise _unknown(head, filename, " (JSON, but not a shape perfgate knows)")
            return fmt
        # Only the start of a larger document: recognise it by its tell-tale keys.
        if stripped.startswith(b"[") and b'"num_requests"' in stripped:
            return "locust-json"
        if stripped.startswith(b"{"):
            if _KIND_VALUE.search(stripped) and _VALUES_OBJECT.search(stripped):
                return "k6-handle-summary"
            if _HANDLE_SUMMARY_GROUPS.search(stripped):
                return "k6-handle-summary"
            if b'"metrics"' in stripped or _EXPORT_GROUPS.search(stripped):
                return "k6-summary-export"
        raise _unknown(head, filename, " (JSON that is incomplete or of an unknown shape)")

    first_line = stripped.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    if first_line.startswith("Type,Name,Request Count"):
        return "locust-csv"
    try:
        header = next(csv.reader([first_line]))
    except (csv.Error, StopIteration):
        header = []
    if "timeStamp" in header and "elapsed" in header:
        return "jmeter-jtl"
    raise _unknown(head, filename)
