"""Numbers as people read them: rounded, with their unit, and one en dash for "none".

The one formatter of every place a person reads a measured value: the CLI's and the server's check
tables, GitHub's summary, Slack and email (``integrations.notify.messages``) and the admin. The API
keeps full precision. Pure code; it lives in the CLI's distribution because the CLI installs
without the server (the server imports it from here, through ``gates.report``).
"""

from __future__ import annotations

import math
import unicodedata

__all__ = ["NONE", "format_change", "format_measure", "format_number", "format_p", "format_value", "unit_of"]

NONE = "\u2013"  # one en dash: a value that is missing
UNIT_WIDTH = 12
TEXT_WIDTH = 24


def _cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-16 units (what Slack counts), ending with "…" when cut."""
    if len(text.encode("utf-16-le", "surrogatepass")) // 2 <= limit:
        return text
    kept, used = [], 0
    for char in text:
        width = 2 if ord(char) > 0xFFFF else 1
        if used + width > limit - 1:
            break
        kept.append(char)
        used += width
    return "".join(kept) + "…"


def _one_line(value) -> str:
    """Text on one line: controls (C0/C1, invisible format characters, line and paragraph
    separators, lone surrogates) become spaces, whitespace collapses."""
    text = "".join(
        " "
        if not char.isprintable() and unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs")
        else char
        for char in str(value)
    )
    return " ".join(text.split())


def format_number(value) -> str | None:
    """A number rounded for reading (``441.0``, ``0.20``, ``6,120``), or None when ``value`` is no number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        if isinstance(value, int) and abs(value) < 10**15:
            return f"{value:,}"
        value = float(value)
    except OverflowError:
        return "∞" if value > 0 else "-∞"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1e15:
        return f"{value:.3g}"
    if magnitude >= 1:
        return f"{value:,.1f}"
    if magnitude >= 0.01:
        return f"{value:.2f}"
    return f"{value:.2g}"


def format_value(value, unit: str = "") -> str:
    """A measured value with its unit: ``441.0 ms``, ``0.20 %``, ``101.8 req/s``, ``6,120``; an en dash
    when there is none."""
    if value is None:
        return NONE
    number = format_number(value)
    if number is None:
        return _cut(_one_line(value), TEXT_WIDTH)
    unit = _cut(_one_line(unit or ""), UNIT_WIDTH)
    return f"{number} {unit}" if unit else number


def format_change(pct) -> str:
    """A change in percent with its sign: ``+25.0 %``, ``-3.0 %``; an en dash when there is none."""
    if pct is None:
        return NONE
    if isinstance(pct, bool) or not isinstance(pct, int | float):
        return _cut(_one_line(pct), TEXT_WIDTH)
    try:
        pct = float(pct)
    except OverflowError:
        return "+∞ %" if pct > 0 else "-∞ %"
    if not math.isfinite(pct):
        return f"{format_number(pct)} %"
    return f"{pct:+.3g} %" if abs(pct) >= 1e6 else f"{pct:+.1f} %"


def format_p(p) -> str:
    """A test's p value, ``p=0.031``; empty when no test ran."""
    if p is None:
        return ""
    if isinstance(p, bool) or not isinstance(p, int | float):
        return "p=" + _cut(_one_line(p), 12)
    try:
        p = float(p)
    except OverflowError:
        return "p=∞"
    return f"p={p:.2g}" if math.isfinite(p) else f"p={format_number(p)}"


def unit_of(metric: str | None, aggregation: str | None = "") -> tuple[str, float]:
    """How a k6 metric's values read: (unit, factor to multiply by). Durations are in ms, request
    rates in req/s, error rates and checks in % (k6 gives a fraction)."""
    name = (metric or "").split("{", 1)[0]
    aggregation = aggregation or ""
    if name.endswith("_duration") or name in ("http_req_waiting", "http_req_connecting"):
        return ("", 1.0) if aggregation == "count" else ("ms", 1.0)
    if name == "http_reqs" and aggregation == "rate":
        return "req/s", 1.0
    if name.endswith("_failed") or name == "checks":
        return "%", 100.0
    return "", 1.0


def format_measure(value, metric: str | None, aggregation: str | None = "") -> str:
    """A value of ``metric`` as people read it: ``341.0 ms``, ``0.20 %``, ``101.8 req/s``."""
    unit, factor = unit_of(metric, aggregation)
    if isinstance(value, float) and aggregation == "count" and value.is_integer() and abs(value) < 10**15:
        value = int(value)  # a count of requests reads 1,000, not 1,000.0
    if isinstance(value, int | float) and not isinstance(value, bool) and factor != 1.0:
        value = value * factor
    return format_value(value, unit)
