"""A run's latency distribution against its baseline, from the stored percentiles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape

from gates.charts.svg import (
    BLUE,
    HEIGHT,
    MUTED,
    WIDTH,
    _finite,
    _fmt,
    _plot_area,
    _Svg,
    _value_axis,
    _with_unit,
    fit,
    text_width,
)


@dataclass(frozen=True)
class Quantile:
    """One stored percentile of a run: ``level`` in percent (min is 0, max is 100)."""

    level: float
    label: str
    value: float


@dataclass(frozen=True)
class QuantileRange:
    """One percentile over a baseline's runs: their median and the lowest and highest run."""

    level: float
    label: str
    centre: float
    low: float
    high: float


def _tail_position(level: float, last: float) -> float:
    """Where a percentile sits on the tail scale: -log10(1 - p), so p50, p90, p99 and p99.9 are
    evenly apart; the maximum half a step past the last percentile."""
    if level >= 100:
        return last + 0.5
    return -math.log10(1 - level / 100)


def distribution_text(
    unit: str,
    build: str,
    run: list[Quantile],
    baseline: list[QuantileRange] | None = None,
    version: int | None = None,
    runs: int = 0,
    title: str = "",
) -> list[str]:
    """The chart in words, one sentence a line; it takes ``distribution_svg``'s arguments."""
    baseline = baseline or []
    lines = [
        "Drawn from the stored percentiles, not from raw samples: perfgate keeps each run's "
        "percentiles, and the lines between them are straight for reading only."
    ]
    if run:
        numbers = ", ".join(f"{q.label} {_with_unit(q.value, unit)}" for q in run)
        lines.append(f"Build {build}: {numbers}.")
    else:
        lines.append(f"Build {build}: no percentiles stored.")
    if baseline:
        numbers = ", ".join(
            f"{q.label} {_with_unit(q.centre, unit)} (runs {_fmt(q.low)} to {_fmt(q.high)})" for q in baseline
        )
        lines.append(f"Baseline v{version}, median over {runs} runs: {numbers}.")
    else:
        lines.append("No baseline to compare with.")
    return lines


def distribution_svg(
    title: str,
    unit: str,
    build: str,
    run: list[Quantile],
    baseline: list[QuantileRange] | None = None,
    version: int | None = None,
    runs: int = 0,
) -> str:
    """A quantile plot: the latency at each stored percentile of the run (a line with points)
    against the baseline's (its median line, with the range of its runs shaded)."""
    run = sorted((q for q in run if _finite(q.value) is not None), key=lambda q: q.level)
    baseline = sorted(
        (q for q in baseline or [] if all(_finite(v) is not None for v in (q.centre, q.low, q.high))),
        key=lambda q: q.level,
    )
    svg = _Svg(title, " ".join(distribution_text(unit, build, run, baseline, version, runs)))
    values = [q.value for q in run] + [v for q in baseline for v in (q.centre, q.low, q.high)]
    values = [v for v in values if _finite(v) is not None]
    if not values:
        svg.text(WIDTH / 2, HEIGHT / 2, "No percentiles stored for this run", anchor="middle")
        return svg.done()
    legend = [("line", "#24292f", f"build {build}")]
    if baseline:
        legend += [
            ("line", BLUE, f"baseline v{version} median"),
            ("band", BLUE, f"baseline runs, lowest to highest ({runs})"),
        ]
    legend_end = svg.legend(legend, 40)
    caption = "stored percentiles (tail scale), not raw samples"
    plot = _plot_area(svg, _value_axis(values), unit, legend_end + 16, HEIGHT - 44)
    levels = sorted({q.level for q in run} | {q.level for q in baseline})
    last = max([_tail_position(level, 0) for level in levels if level < 100], default=0.0)
    end = last + 0.5 if any(level >= 100 for level in levels) else max(last, 0.5)

    def x(level: float) -> float:
        return plot.left + 12 + (plot.right - plot.left - 24) * _tail_position(level, last) / end

    labels = {q.level: q.label for q in [*baseline, *run]}
    shown_until = -math.inf
    for level in levels:
        label = labels[level]
        half = text_width(label) / 2
        if x(level) - half > shown_until + 4:
            svg.text(x(level), plot.bottom + 14, label, anchor="middle")
            shown_until = x(level) + half
        svg.add(
            f'<line x1="{x(level):.1f}" x2="{x(level):.1f}" y1="{plot.bottom:.1f}" '
            f'y2="{plot.bottom + 3:.1f}" stroke="{MUTED}"/>'
        )
    svg.text(
        (plot.left + plot.right) / 2, plot.bottom + 30, fit(caption, plot.right - plot.left), anchor="middle"
    )

    if baseline:
        upper = " ".join(f"{x(q.level):.1f},{plot.y(q.high):.1f}" for q in baseline)
        lower = " ".join(f"{x(q.level):.1f},{plot.y(q.low):.1f}" for q in reversed(baseline))
        svg.add(
            f'<polygon class="baseline-range" points="{upper} {lower}" fill="{BLUE}" fill-opacity="0.15"/>'
        )
        centre = " ".join(f"{x(q.level):.1f},{plot.y(q.centre):.1f}" for q in baseline)
        svg.add(
            f'<polyline class="baseline-quantiles" points="{centre}" fill="none" stroke="{BLUE}" '
            'stroke-width="1.5"/>'
        )
    if run:
        line = " ".join(f"{x(q.level):.1f},{plot.y(q.value):.1f}" for q in run)
        svg.add(
            f'<polyline class="run-quantiles" points="{line}" fill="none" stroke="#24292f" stroke-width="2"/>'
        )
        for q in run:
            tooltip = f"{q.label}: {_with_unit(q.value, unit)}"
            svg.add(
                f'<circle class="run-quantile" cx="{x(q.level):.1f}" cy="{plot.y(q.value):.1f}" r="3.5" '
                f'fill="#24292f"><title>{escape(tooltip)}</title></circle>'
            )
    return svg.done()


# ---------------------------------------------------------------------------------------------
# A watch's probes
