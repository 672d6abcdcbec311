"""SVG charts drawn on the server: no JavaScript, no build step.

Pure code: they take plain points and return the SVG text. ``history_svg``: one metric's history,
each validation a point coloured by its outcome; bypassed builds get a ring; the baseline is a
band (lowest to highest run of the baseline) with its mean, and the fail limit a dashed line.
``probe_svg``: one key of a watch's probes against its probe baseline (a band from its lowest to
highest value, with its median); failures get a red ring, probes that measured nothing a cross.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 52, 56
COLOURS = {
    "passed": "#1a7f37",
    "blocked": "#cf222e",
    "failed": "#bc4c00",
    "bypassed": "#8250df",
    "queued": "#57606a",
    "running": "#0969da",
}


@dataclass(frozen=True)
class Point:
    label: str  # the build id
    value: float | None  # None: the run has no such number (still shown on the axis)
    status: str
    current: bool = False


@dataclass(frozen=True)
class Band:
    low: float
    high: float
    mean: float
    version: int


def _fmt(value: float) -> str:
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"


def history_svg(
    title: str, unit: str, points: list[Point], band: Band | None = None, limit: float | None = None
) -> str:
    """The chart as a standalone SVG document."""
    values = [p.value for p in points if p.value is not None]
    extent = values + ([band.low, band.high] if band else []) + ([limit] if limit is not None else [])
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="system-ui, sans-serif" font-size="11" role="img">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="20" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    if not extent:
        lines.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#57606a">'
            "No measurements yet</text></svg>"
        )
        return "\n".join(lines)
    low, high = min(extent), max(extent)
    pad = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
    low, high = max(0.0, low - pad) if low >= 0 else low - pad, high + pad
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def y(value: float) -> float:
        return TOP + plot_h * (1 - (value - low) / (high - low))

    def x(index: int) -> float:
        return LEFT + (plot_w * (index + 0.5) / len(points) if points else plot_w / 2)

    for step in range(5):
        value = low + (high - low) * step / 4
        lines.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            'stroke="#eaeef2"/>'
        )
        lines.append(
            f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" fill="#57606a">'
            f"{_fmt(value)}</text>"
        )
    lines.append(
        f'<text x="14" y="{TOP + plot_h / 2}" transform="rotate(-90 14 {TOP + plot_h / 2})" '
        f'text-anchor="middle" fill="#57606a">{escape(unit)}</text>'
    )
    if band:
        lines.append(
            f'<rect class="baseline-band" x="{LEFT}" y="{y(band.high):.1f}" width="{plot_w}" '
            f'height="{max(1.0, y(band.low) - y(band.high)):.1f}" fill="#0969da" fill-opacity="0.12"/>'
        )
        lines.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(band.mean):.1f}" y2="{y(band.mean):.1f}" '
            'stroke="#0969da" stroke-width="1.5"/>'
        )
        lines.append(
            f'<text x="{WIDTH - RIGHT}" y="{y(band.mean) - 4:.1f}" text-anchor="end" fill="#0969da">'
            f"baseline v{band.version} {_fmt(band.mean)}</text>"
        )
    if limit is not None:
        lines.append(
            f'<line class="limit" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(limit):.1f}" '
            f'y2="{y(limit):.1f}" stroke="#cf222e" stroke-dasharray="6 4"/>'
        )
        lines.append(
            f'<text x="{LEFT + 4}" y="{y(limit) - 4:.1f}" fill="#cf222e">fail above {_fmt(limit)}</text>'
        )
    previous = None
    for index, point in enumerate(points):
        if point.value is None:
            continue
        here = (x(index), y(point.value))
        if previous:
            lines.append(
                f'<line x1="{previous[0]:.1f}" y1="{previous[1]:.1f}" x2="{here[0]:.1f}" '
                f'y2="{here[1]:.1f}" stroke="#8c959f"/>'
            )
        previous = here
    for index, point in enumerate(points):
        label_y = HEIGHT - BOTTOM + 14
        short = point.label if len(point.label) <= 14 else "…" + point.label[-13:]
        if len(points) <= 12 or point.current or index % max(1, len(points) // 8) == 0:
            lines.append(
                f'<text x="{x(index):.1f}" y="{label_y}" text-anchor="end" fill="#57606a" '
                f'transform="rotate(-30 {x(index):.1f} {label_y})">{escape(short)}</text>'
            )
        if point.value is None:
            continue
        cx, cy = x(index), y(point.value)
        colour = COLOURS.get(point.status, "#57606a")
        radius = 6 if point.current else 4
        tooltip = f"{point.label}: {_fmt(point.value)} {unit} ({point.status})"
        lines.append(
            f'<circle class="point {escape(point.status)}" cx="{cx:.1f}" cy="{cy:.1f}" r="{radius}" '
            f'fill="{colour}" stroke="#24292f" stroke-width="{1.5 if point.current else 0}">'
            f"<title>{escape(tooltip)}</title></circle>"
        )
        if point.status == "bypassed":
            lines.append(
                f'<circle class="bypass-marker" cx="{cx:.1f}" cy="{cy:.1f}" r="{radius + 4}" fill="none" '
                f'stroke="{COLOURS["bypassed"]}" stroke-width="2"/>'
            )
    legend = [
        ("passed", "passed"),
        ("blocked", "blocked"),
        ("failed", "no verdict"),
        ("bypassed", "bypassed"),
    ]
    for index, (status, text) in enumerate(legend):
        lx = WIDTH - RIGHT - 360 + index * 90
        lines.append(f'<circle cx="{lx}" cy="34" r="4" fill="{COLOURS[status]}"/>')
        lines.append(f'<text x="{lx + 8}" y="38" fill="#57606a">{text}</text>')
    lines.append("</svg>")
    return "\n".join(lines)


PROBE_COLOURS = {
    "success": "#1a7f37",
    "failure": "#cf222e",
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
    values = [p.value for p in points if p.value is not None]
    extent = values + ([band.low, band.high, band.median] if band else [])
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="system-ui, sans-serif" font-size="11" role="img">',
        f"<title>{escape(title)}</title>",
        f"<desc>{escape(' '.join(probe_text(unit, points, band)))}</desc>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="20" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    if not extent:
        message = "No probe has run yet" if not points else "No probe measured this"
        lines.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#57606a">{message}</text>'
        )
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    low, high = (min(extent), max(extent)) if extent else (0.0, 1.0)
    pad = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
    low, high = max(0.0, low - pad) if low >= 0 else low - pad, high + pad

    def y(value: float) -> float:
        return TOP + plot_h * (1 - (value - low) / (high - low))

    def x(index: int) -> float:
        return LEFT + plot_w * (index + 0.5) / max(len(points), 1)

    if extent:
        for step in range(5):
            value = low + (high - low) * step / 4
            lines.append(
                f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                'stroke="#eaeef2"/>'
            )
            lines.append(
                f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" fill="#57606a">'
                f"{_fmt(value)}</text>"
            )
        lines.append(
            f'<text x="14" y="{TOP + plot_h / 2}" transform="rotate(-90 14 {TOP + plot_h / 2})" '
            f'text-anchor="middle" fill="#57606a">{escape(unit)}</text>'
        )
    if band:
        lines.append(
            f'<rect class="baseline-band" x="{LEFT}" y="{y(band.high):.1f}" width="{plot_w}" '
            f'height="{max(1.0, y(band.low) - y(band.high)):.1f}" fill="#0969da" fill-opacity="0.12"/>'
        )
        lines.append(
            f'<line class="baseline-median" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(band.median):.1f}" '
            f'y2="{y(band.median):.1f}" stroke="#0969da" stroke-width="1.5"/>'
        )
        lines.append(
            f'<text x="{WIDTH - RIGHT}" y="{y(band.median) - 4:.1f}" text-anchor="end" fill="#0969da">'
            f"probe baseline {_fmt(band.median)} ({band.count} probes)</text>"
        )
    previous = None
    for index, point in enumerate(points):
        if point.value is None:
            previous = None  # no line drawn across a probe that measured nothing
            continue
        here = (x(index), y(point.value))
        if previous:
            lines.append(
                f'<line x1="{previous[0]:.1f}" y1="{previous[1]:.1f}" x2="{here[0]:.1f}" '
                f'y2="{here[1]:.1f}" stroke="#8c959f"/>'
            )
        previous = here
    axis_y = HEIGHT - BOTTOM
    for index, point in enumerate(points):
        cx = x(index)
        if len(points) <= 24 or index % max(1, len(points) // 12) == 0:
            lines.append(
                f'<text x="{cx:.1f}" y="{axis_y + 16}" text-anchor="middle" fill="#57606a">'
                f"#{point.number}</text>"
            )
        colour = PROBE_COLOURS.get(point.outcome, "#57606a")
        measured = "no value" if point.value is None else f"{_fmt(point.value)} {unit}".strip()
        tooltip = f"probe {point.number} ({point.trigger}): {measured}, {point.outcome}"
        if point.value is None:
            lines.append(
                f'<path class="error-marker" d="M{cx - 5:.1f},{axis_y - 11} l10,10 m0,-10 l-10,10" '
                f'stroke="{colour}" stroke-width="2"><title>{escape(tooltip)}</title></path>'
            )
            continue
        cy = y(point.value)
        lines.append(
            f'<circle class="point {escape(point.outcome)}" cx="{cx:.1f}" cy="{cy:.1f}" r="4" '
            f'fill="{colour}"><title>{escape(tooltip)}</title></circle>'
        )
        if point.outcome == "failure":
            lines.append(
                f'<circle class="failure-marker" cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="none" '
                f'stroke="{colour}" stroke-width="2"/>'
            )
    for index, (outcome, colour) in enumerate(PROBE_COLOURS.items()):
        lx = WIDTH - RIGHT - 360 + index * 90
        lines.append(f'<circle cx="{lx}" cy="34" r="4" fill="{colour}"/>')
        lines.append(f'<text x="{lx + 8}" y="38" fill="#57606a">{outcome}</text>')
    lines.append("</svg>")
    return "\n".join(lines)
