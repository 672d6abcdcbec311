"""One metric over a scenario's validations, with the baseline's runs and the decision's band."""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape

from gates.charts.svg import (
    AMBER,
    BLUE,
    COLOURS,
    FONT,
    HEIGHT,
    LABEL_ANGLE,
    LABEL_MAX_WIDTH,
    MUTED,
    RED,
    WIDTH,
    _connect,
    _finite,
    _fmt,
    _in_plot_label,
    _Plot,
    _plot_area,
    _Svg,
    _value_axis,
    _with_unit,
    fit,
    text_width,
)


@dataclass(frozen=True)
class Point:
    label: str  # the build id
    value: float | None  # None: the run has no such number (still shown on the axis)
    status: str
    current: bool = False


@dataclass(frozen=True)
class BaselineRuns:
    """The baseline the validation was compared with: its version, its centre (the median of its
    runs: what relative rules compare with) and each run's value, oldest first."""

    version: int
    centre: float
    runs: tuple[float, ...]


@dataclass(frozen=True)
class PredictionBand:
    """History mode's noise band: one more run of the baseline falls above ``low`` and below
    ``high`` except with probability ``false_block_rate`` on each side. A check fails only when
    the run is beyond the edge in its worse direction (``worse``: "up" or "down") and past the
    fail threshold as well."""

    low: float
    high: float
    false_block_rate: float
    runs: int
    worse: str = "up"

    @property
    def edge(self) -> float:
        return self.high if self.worse == "up" else self.low


@dataclass(frozen=True)
class ABInterval:
    """Gate-run mode: the build against the reference measured side by side. ``reference`` is the
    reference's median repetition; ``estimate``, ``low`` and ``high`` are the estimated change
    and the ends of its interval at ``level`` (e.g. 0.9) applied to it, in the metric's unit; an
    end is None when too few pairs bound it."""

    reference: float
    estimate: float
    low: float | None
    high: float | None
    level: float
    pairs: int
    change_pct: float | None = None
    low_pct: float | None = None
    high_pct: float | None = None


def _pct(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:+.1f}%"


def history_text(
    unit: str,
    points: list[Point],
    baseline: BaselineRuns | None = None,
    band: PredictionBand | None = None,
    limit: float | None = None,
    interval: ABInterval | None = None,
    title: str = "",
) -> list[str]:
    """The chart in words, one sentence a line: the baseline's runs, the band the decision used,
    the limit and every point. It takes ``history_svg``'s arguments (``title`` is not repeated)."""
    lines = []
    if baseline is None:
        lines.append("No baseline: relative rules had nothing to compare with.")
    else:
        runs = ", ".join(_fmt(value) for value in baseline.runs) or "none"
        lines.append(
            f"Baseline v{baseline.version}: median {_with_unit(baseline.centre, unit)} over "
            f"{len(baseline.runs)} runs ({runs})."
        )
    if interval is not None:
        lines.append(
            f"Decided side by side in {interval.pairs} ABBA pairs: reference "
            f"{_with_unit(interval.reference, unit)}, change {_pct(interval.change_pct)} "
            f"({interval.level:.0%} interval {_pct(interval.low_pct)} to {_pct(interval.high_pct)}: "
            f"{_with_unit(interval.low, unit)} to {_with_unit(interval.high, unit)})."
        )
    elif band is not None:
        side = "above" if band.worse == "up" else "below"
        lines.append(
            f"Prediction band (history mode, false-block rate {band.false_block_rate:g} a side, "
            f"{band.runs} runs): {_with_unit(band.low, unit)} to {_with_unit(band.high, unit)}; a run "
            f"{side} {_with_unit(band.edge, unit)} is beyond the run-to-run noise."
        )
    elif baseline is not None:
        lines.append("Fewer than 3 baseline runs: no noise model, the fail threshold alone decided.")
    if limit is not None:
        lines.append(f"Fail threshold: {_with_unit(limit, unit)}.")
    if not points:
        lines.append("No validation yet.")
    for point in points:
        this = " (this validation)" if point.current else ""
        lines.append(f"{point.label}{this}: {_with_unit(point.value, unit)}, {point.status}.")
    return lines


def history_svg(
    title: str,
    unit: str,
    points: list[Point],
    baseline: BaselineRuns | None = None,
    band: PredictionBand | None = None,
    limit: float | None = None,
    interval: ABInterval | None = None,
) -> str:
    """The chart as a standalone SVG document: the baseline's runs on the left, the validations
    (oldest first) on the right, the band the decision used behind them."""
    svg = _Svg(title, " ".join(history_text(unit, points, baseline, band, limit, interval)))
    runs = [v for v in (baseline.runs if baseline else ()) if _finite(v) is not None]
    values = [p.value for p in points if _finite(p.value) is not None] + runs
    if not values:
        svg.text(WIDTH / 2, HEIGHT / 2, "No measurements yet", anchor="middle")
        return svg.done()
    extent = list(values)
    extent += [v for v in (limit, baseline.centre if baseline else None) if _finite(v) is not None]
    if interval is not None:
        ends = (interval.reference, interval.estimate, interval.low, interval.high)
        extent += [v for v in ends if _finite(v) is not None]
    span = max(extent) - min(extent) or abs(max(extent)) or 1.0
    if band is not None:
        # A band far wider than everything else (few, noisy runs) is drawn to the edge, not
        # allowed to flatten the points: the numbers are in the description.
        extent += [v for v in (band.low, band.high) if min(extent) - span <= v <= max(extent) + span]

    legend = [
        ("dot", COLOURS["passed"], "passed"),
        ("dot", COLOURS["blocked"], "blocked"),
        ("dot", COLOURS["failed"], "failed (no verdict)"),
        ("ring", COLOURS["bypassed"], "bypassed"),
    ]
    if runs:
        legend.append(("hollow", BLUE, f"baseline v{baseline.version} runs ({len(runs)}), on the left"))
    if interval is not None:
        legend.append(("band", AMBER, f"A/B {interval.level:.0%} interval ({interval.pairs} pairs)"))
        legend.append(("square", "#24292f", "reference (A)"))
    elif band is not None:
        legend.append(
            ("band", BLUE, f"noise band: beyond it p < {band.false_block_rate:g} ({band.runs} runs)")
        )
    if limit is not None:
        legend.append(("dash", RED, "fail threshold"))
    legend_end = svg.legend(legend, 40)

    longest = max((text_width(point.label, bold=point.current) for point in points), default=0.0)
    depth = min(LABEL_MAX_WIDTH, longest) * math.sin(math.radians(LABEL_ANGLE)) + FONT * 1.5
    plot = _plot_area(svg, _value_axis(extent), unit, legend_end + 16, HEIGHT - 14 - depth)
    width = plot.right - plot.left
    panel = min(150.0, width * 0.22) if runs else 0.0
    history_left = plot.left + panel + (8 if runs else 0)
    count = max(len(points), 1)

    def x(index: int) -> float:
        return history_left + (plot.right - history_left) * (index + 0.5) / count

    if band is not None and interval is None:
        top, bottom = plot.clip(plot.y(band.high)), plot.clip(plot.y(band.low))
        svg.add(
            f'<rect class="noise-band" x="{plot.left:.1f}" y="{top:.1f}" width="{width:.1f}" '
            f'height="{max(1.0, bottom - top):.1f}" fill="{BLUE}" fill-opacity="0.12"/>'
        )
    if baseline is not None and _finite(baseline.centre) is not None:
        y = plot.y(baseline.centre)
        svg.add(
            f'<line class="baseline-centre" x1="{plot.left:.1f}" x2="{plot.right:.1f}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="{BLUE}" stroke-width="1.5"/>'
        )
        text = f"baseline v{baseline.version} median {_with_unit(baseline.centre, unit)}"
        _in_plot_label(svg, plot, plot.right - 2, y, text, "end", BLUE)
    if limit is not None and _finite(limit) is not None:
        y = plot.y(limit)
        svg.add(
            f'<line class="limit" x1="{plot.left:.1f}" x2="{plot.right:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{RED}" stroke-dasharray="6 4"/>'
        )
        side = "below" if band is not None and band.worse == "down" else "above"
        _in_plot_label(svg, plot, history_left + 4, y, f"fail {side} {_with_unit(limit, unit)}", "start", RED)

    if runs:
        separator = plot.left + panel + 4
        svg.add(
            f'<line x1="{separator:.1f}" x2="{separator:.1f}" y1="{plot.top:.1f}" y2="{plot.bottom:.1f}" '
            f'stroke="#8c959f" stroke-dasharray="2 3"/>'
        )
        for index, value in enumerate(runs):
            cx = plot.left + panel * (index + 0.5) / len(runs)
            svg.add(
                f'<circle class="baseline-run" cx="{cx:.1f}" cy="{plot.y(value):.1f}" r="3" fill="#ffffff" '
                f'stroke="{BLUE}" stroke-width="1.5"><title>baseline run {index + 1}: '
                f"{escape(_with_unit(value, unit))}</title></circle>"
            )

    _connect(svg, plot, x, [point.value for point in points])

    current = next((index for index, point in enumerate(points) if point.current), None)
    if interval is not None:
        _draw_interval(svg, plot, interval, x(count - 1 if current is None else current), unit)

    sin, cos = math.sin(math.radians(LABEL_ANGLE)), math.cos(math.radians(LABEL_ANGLE))
    # Slanted labels are (font size + a little) apart across their slant: thin them out to that.
    every = max(1, math.ceil((FONT + 3) / ((plot.right - history_left) / count * sin)))
    label_y = plot.bottom + 12
    for index, point in enumerate(points):
        cx = x(index)
        near_current = current is not None and 0 < abs(index - current) < every
        if index == current or (index % every == 0 and not near_current):
            # Slanted up to the right and ending under the point: it may reach as far left as the
            # picture's edge (its glyphs rise a font size across the slant) and as far down as
            # its bottom (their descenders a third of one).
            room = min(
                LABEL_MAX_WIDTH,
                (cx - 2 - FONT * sin) / cos,
                (HEIGHT - 2 - label_y - FONT * 0.3 * cos) / sin,
            )
            svg.text(
                cx,
                label_y,
                fit(point.label, room),
                anchor="end",
                rotate=-LABEL_ANGLE,
                bold=point.current,
                fill="#24292f" if point.current else MUTED,
                full=point.label,
            )
        tooltip = f"{point.label}: {_with_unit(point.value, unit)} ({point.status})"
        if _finite(point.value) is None:
            svg.add(
                f'<path class="missing-marker" d="M{cx - 4:.1f},{plot.bottom - 10:.1f} l8,8 m0,-8 l-8,8" '
                f'stroke="{MUTED}" stroke-width="1.5"><title>{escape(tooltip)}</title></path>'
            )
            continue
        cy = plot.y(point.value)
        radius = 6 if point.current else 4
        svg.add(
            f'<circle class="point {escape(point.status)}" cx="{cx:.1f}" cy="{cy:.1f}" r="{radius}" '
            f'fill="{COLOURS.get(point.status, MUTED)}" stroke="#24292f" '
            f'stroke-width="{1.5 if point.current else 0}"><title>{escape(tooltip)}</title></circle>'
        )
        if point.status == "bypassed":
            svg.add(
                f'<circle class="bypass-marker" cx="{cx:.1f}" cy="{cy:.1f}" r="{radius + 4}" fill="none" '
                f'stroke="{COLOURS["bypassed"]}" stroke-width="2"/>'
            )
    return svg.done()


def _draw_interval(svg: _Svg, plot: _Plot, interval: ABInterval, cx: float, unit: str) -> None:
    """The A/B interval at the current build: a bar from its low to its high end (to the plot's
    edge when unbounded), the estimate across it, and the reference as a hollow square."""
    top = plot.top if _finite(interval.high) is None else plot.clip(plot.y(interval.high))
    bottom = plot.bottom if _finite(interval.low) is None else plot.clip(plot.y(interval.low))
    tooltip = (
        f"A/B {interval.level:.0%} interval: {_with_unit(interval.low, unit)} to "
        f"{_with_unit(interval.high, unit)} (change {_pct(interval.low_pct)} to {_pct(interval.high_pct)})"
    )
    svg.add(
        f'<rect class="ab-interval" x="{cx - 9:.1f}" y="{top:.1f}" width="18" '
        f'height="{max(1.0, bottom - top):.1f}" fill="{AMBER}" fill-opacity="0.25" stroke="{AMBER}">'
        f"<title>{escape(tooltip)}</title></rect>"
    )
    if _finite(interval.estimate) is not None:
        y = plot.clip(plot.y(interval.estimate))
        svg.add(
            f'<line class="ab-estimate" x1="{cx - 11:.1f}" x2="{cx + 11:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{AMBER}" stroke-width="2"/>'
        )
    if _finite(interval.reference) is not None:
        y = plot.clip(plot.y(interval.reference))
        reference = escape(_with_unit(interval.reference, unit))
        svg.add(
            f'<rect class="ab-reference" x="{cx - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" '
            f'fill="#ffffff" stroke="#24292f"><title>reference {reference}</title></rect>'
        )


# ---------------------------------------------------------------------------------------------
# The latency distribution of a run against its baseline
