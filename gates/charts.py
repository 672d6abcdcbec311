"""An SVG chart of one metric's history, drawn on the server: no JavaScript, no build step.

Pure code: it takes plain points and returns the SVG text. Each validation is a point coloured by
its outcome; bypassed builds get a ring; the baseline is a band (lowest to highest run of the
baseline) with its mean, and the fail limit a dashed line.
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
