"""One key of a watch's probes against its probe baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape

from gates.charts.svg import (
    BLUE,
    HEIGHT,
    MUTED,
    RED,
    WIDTH,
    _connect,
    _finite,
    _fmt,
    _in_plot_label,
    _plot_area,
    _Svg,
    _value_axis,
    text_width,
)

PROBE_COLOURS = {
    "success": "#1a7f37",
    "failure": RED,
    "inconclusive": "#8250df",
    "error": "#bc4c00",
}


@dataclass(frozen=True)
class ProbePoint:
    number: int
    value: float | None  # None: the probe measured nothing for this key (an error, as a rule)
    outcome: str  # success | failure | inconclusive | error
    trigger: str = "schedule"


@dataclass(frozen=True)
class ProbeBand:
    """The probe baseline of one key: the lowest and highest of its values, and their median."""

    low: float
    high: float
    median: float
    count: int


def probe_text(unit: str, points: list[ProbePoint], band: ProbeBand | None) -> list[str]:
    """The chart in words, one sentence a line: what a screen reader (and the test) reads."""
    suffix = f" {unit}" if unit else ""
    lines = []
    if band is None:
        lines.append("No probe baseline: relative rules did not decide.")
    else:
        lines.append(
            f"Probe baseline: median {_fmt(band.median)}{suffix}, from {_fmt(band.low)} to "
            f"{_fmt(band.high)}{suffix} over {band.count} probes."
        )
    if not points:
        lines.append("No probe has run yet.")
    for point in points:
        measured = "no value" if point.value is None else f"{_fmt(point.value)}{suffix}"
        via = "" if point.trigger == "schedule" else f" ({point.trigger})"
        lines.append(f"Probe {point.number}{via}: {measured}, {point.outcome}.")
    return lines


def probe_svg(title: str, unit: str, points: list[ProbePoint], band: ProbeBand | None = None) -> str:
    """One key of a watch's probes (e.g. http_req_duration p(95)) against its probe baseline, as a
    standalone SVG document. Failures get a red ring; a probe without a value (an error) is a
    cross on the axis, never a point at zero. The numbers are also in the ``<desc>``."""
    svg = _Svg(title, " ".join(probe_text(unit, points, band)))
    values = [p.value for p in points if _finite(p.value) is not None]
    extent = values + ([band.low, band.high, band.median] if band else [])
    legend_end = svg.legend([("dot", colour, outcome) for outcome, colour in PROBE_COLOURS.items()], 40)
    plot = _plot_area(svg, _value_axis(extent), unit, legend_end + 16, HEIGHT - 40, draw=bool(extent))
    if not extent:
        message = "No probe has run yet" if not points else "No probe measured this"
        svg.text(WIDTH / 2, (plot.top + plot.bottom) / 2, message, anchor="middle")

    def x(index: int) -> float:
        return plot.left + (plot.right - plot.left) * (index + 0.5) / max(len(points), 1)

    if band:
        top, bottom = plot.y(band.high), plot.y(band.low)
        svg.add(
            f'<rect class="baseline-band" x="{plot.left:.1f}" y="{top:.1f}" '
            f'width="{plot.right - plot.left:.1f}" height="{max(1.0, bottom - top):.1f}" fill="{BLUE}" '
            'fill-opacity="0.12"/>'
        )
        y = plot.y(band.median)
        svg.add(
            f'<line class="baseline-median" x1="{plot.left:.1f}" x2="{plot.right:.1f}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="{BLUE}" stroke-width="1.5"/>'
        )
        text = f"probe baseline {_fmt(band.median)} ({band.count} probes)"
        _in_plot_label(svg, plot, plot.right - 2, y, text, "end", BLUE)
    _connect(svg, plot, x, [point.value for point in points])
    step = (plot.right - plot.left) / max(len(points), 1)
    every = max(1, math.ceil((text_width(f"#{points[-1].number}" if points else "#") + 6) / step))
    for index, point in enumerate(points):
        cx = x(index)
        if index % every == 0:
            svg.text(cx, plot.bottom + 16, f"#{point.number}", anchor="middle")
        colour = PROBE_COLOURS.get(point.outcome, MUTED)
        measured = "no value" if point.value is None else f"{_fmt(point.value)} {unit}".strip()
        tooltip = f"probe {point.number} ({point.trigger}): {measured}, {point.outcome}"
        if _finite(point.value) is None:
            svg.add(
                f'<path class="error-marker" d="M{cx - 5:.1f},{plot.bottom - 11:.1f} l10,10 m0,-10 l-10,10" '
                f'stroke="{colour}" stroke-width="2"><title>{escape(tooltip)}</title></path>'
            )
            continue
        cy = plot.y(point.value)
        svg.add(
            f'<circle class="point {escape(point.outcome)}" cx="{cx:.1f}" cy="{cy:.1f}" r="4" '
            f'fill="{colour}"><title>{escape(tooltip)}</title></circle>'
        )
        if point.outcome == "failure":
            svg.add(
                f'<circle class="failure-marker" cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="none" '
                f'stroke="{colour}" stroke-width="2"/>'
            )
    return svg.done()
