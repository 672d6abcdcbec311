"""What every chart shares: sizes, colours, measured text, the SVG writer and the value axis."""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

WIDTH = 720
HEIGHT = 340
FONT = 11
TITLE_FONT = 13
PAD = 10
# Width of one character in em: wider than system-ui's digits and lower case (about 0.55), so a
# measured label never runs past where the layout expects it to end; bold is wider still.
CHAR_EM = 0.62
BOLD = 1.08
MUTED = "#57606a"
GRID = "#eaeef2"
BLUE = "#0969da"
RED = "#cf222e"
AMBER = "#bf8700"
COLOURS = {
    "passed": "#1a7f37",
    "blocked": RED,
    "failed": "#bc4c00",
    "bypassed": "#8250df",
    "queued": MUTED,
    "running": BLUE,
}
# x-axis labels of the history: slanted so that long build ids fit, never longer than this.
LABEL_ANGLE = 35
LABEL_MAX_WIDTH = 120.0


def text_width(text: str, size: float = FONT, bold: bool = False) -> float:
    """How wide ``text`` may be drawn, at most (see ``CHAR_EM``)."""
    return len(text) * size * CHAR_EM * (BOLD if bold else 1.0)


def fit(text: str, width: float, size: float = FONT, bold: bool = False) -> str:
    """``text``, or its start and its end around an ellipsis (the end of a build id tells it from
    its neighbours), no wider than ``width``."""
    if text_width(text, size, bold) <= width:
        return text
    keep = int(width // (size * CHAR_EM * (BOLD if bold else 1.0))) - 1
    if keep <= 0:
        return "…" if keep == 0 else ""
    head = keep // 3
    return text[:head] + "…" + text[len(text) - (keep - head) :]


def _fmt(value: float) -> str:
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.4g}"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _with_unit(value: float | None, unit: str) -> str:
    if value is None:
        return "no value"
    return f"{_fmt(value)} {unit}".rstrip()


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class _Svg:
    """One chart being drawn: a standalone document with its title and text alternative."""

    def __init__(self, title: str, description: str, height: int = HEIGHT):
        self.width, self.height = WIDTH, height
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="system-ui, sans-serif" font-size="{FONT}" '
            'role="img">',
            f"<title>{escape(title)}</title>",
            f"<desc>{escape(description)}</desc>",
            f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        ]
        shown = fit(title, WIDTH - 2 * PAD, TITLE_FONT, bold=True)
        self.text(PAD, 20, shown, size=TITLE_FONT, bold=True, fill="#24292f", full=title)

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(
        self,
        x: float,
        y: float,
        text: str,
        *,
        anchor: str = "start",
        size: float = FONT,
        bold: bool = False,
        fill: str = MUTED,
        rotate: float = 0,
        css: str = "",
        full: str | None = None,
    ) -> None:
        """A label; ``full`` is the whole text when ``text`` is a shortened one (a tooltip)."""
        attributes = f'x="{x:.1f}" y="{y:.1f}" fill="{fill}"'
        if anchor != "start":
            attributes += f' text-anchor="{anchor}"'
        if size != FONT:
            attributes += f' font-size="{size}"'
        if bold:
            attributes += ' font-weight="600"'
        if rotate:
            attributes += f' transform="rotate({rotate:g} {x:.1f} {y:.1f})"'
        if css:
            attributes += f" class={quoteattr(css)}"
        element = f"<text {attributes}>{escape(text)}</text>"
        if full is not None and full != text:
            element = f"<g><title>{escape(full)}</title>{element}</g>"
        self.parts.append(element)

    def legend(self, items: list[tuple[str, str, str]], top: float) -> float:
        """Swatches with their words, in rows that wrap; returns where the rows end. Each item is
        (swatch: dot, ring, hollow, band, dash, line or cross; colour; words)."""
        x, y = float(PAD), top
        for swatch, colour, words in items:
            words = fit(words, WIDTH - 2 * PAD - 16)
            needed = 16 + text_width(words) + 14
            if x > PAD and x + needed > WIDTH - PAD:
                x, y = float(PAD), y + 16
            self.add(_swatch(swatch, colour, x + 5, y - 4))
            self.text(x + 14, y, words)
            x += needed
        return y

    def done(self) -> str:
        return "\n".join([*self.parts, "</svg>"])


def _swatch(kind: str, colour: str, cx: float, cy: float) -> str:
    if kind == "ring":
        return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="none" stroke="{colour}" stroke-width="2"/>'
    if kind == "hollow":
        return (
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="#ffffff" stroke="{colour}" '
            'stroke-width="1.5"/>'
        )
    if kind in ("band", "square"):
        fill = (
            f'fill="{colour}" fill-opacity="0.25"' if kind == "band" else f'fill="#ffffff" stroke="{colour}"'
        )
        side = 10 if kind == "band" else 8
        return (
            f'<rect x="{cx - side / 2:.1f}" y="{cy - side / 2:.1f}" width="{side}" height="{side}" {fill}/>'
        )
    if kind in ("dash", "line"):
        dash = ' stroke-dasharray="4 2"' if kind == "dash" else ""
        return (
            f'<line x1="{cx - 6:.1f}" x2="{cx + 6:.1f}" y1="{cy:.1f}" y2="{cy:.1f}" stroke="{colour}" '
            f'stroke-width="2"{dash}/>'
        )
    if kind == "cross":
        return f'<path d="M{cx - 4:.1f},{cy - 4:.1f} l8,8 m0,-8 l-8,8" stroke="{colour}" stroke-width="2"/>'
    return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}"/>'


@dataclass(frozen=True)
class _Axis:
    """A value axis: round ticks from below the lowest value to above the highest."""

    ticks: tuple[float, ...]
    labels: tuple[str, ...]

    @property
    def low(self) -> float:
        return self.ticks[0]

    @property
    def high(self) -> float:
        return self.ticks[-1]


def _value_axis(values: list[float]) -> _Axis:
    """Four or five round steps (1, 2, 2.5 or 5 times a power of ten) covering ``values`` with a
    little room; equal values get room around them; an axis of positive values starts at 0 or above."""
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (high - low) * 0.08 or abs(high) * 0.1 or 1.0
    low, high = (max(0.0, low - pad) if low >= 0 else low - pad), high + pad
    raw = (high - low) / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * 0.999)
    first = math.floor(low / step + 1e-9) * step
    count = math.ceil((high - first) / step - 1e-9)
    ticks = tuple(first + i * step for i in range(count + 1))
    largest = max(abs(ticks[0]), abs(ticks[-1]))
    if largest >= 1e6 or step < 1e-3:
        digits = max(2, math.ceil(math.log10(largest / step)) + 2) if largest else 2
        labels = tuple("0" if t == 0 else f"{t:.{digits}g}" for t in ticks)
    else:
        decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (
            1 if round(step / magnitude, 1) == 2.5 else 0
        )
        labels = tuple(f"{t:,.{decimals}f}" for t in ticks)
    return _Axis(ticks, labels)


@dataclass(frozen=True)
class _Plot:
    """Where the data goes, in pixels, and the value axis that maps values onto it."""

    left: float
    top: float
    right: float
    bottom: float
    axis: _Axis

    def y(self, value: float) -> float:
        share = (value - self.axis.low) / (self.axis.high - self.axis.low)
        return self.bottom - (self.bottom - self.top) * share

    def clip(self, y: float) -> float:
        return min(self.bottom, max(self.top, y))


def _plot_area(svg: _Svg, axis: _Axis, unit: str, top: float, bottom: float, draw: bool = True) -> _Plot:
    """The one value axis of every chart: grid lines, tick labels right-aligned against the plot
    (the left margin is as wide as the widest label) and the unit written up the side. Without
    ``draw``, only the place of the plot (nothing measured yet: no axis to show)."""
    unit_x = PAD + FONT
    left = unit_x + 8 + max(text_width(label) for label in axis.labels) + 8
    plot = _Plot(left=left, top=top, right=WIDTH - PAD - 8, bottom=bottom, axis=axis)
    if not draw:
        return plot
    for tick, label in zip(axis.ticks, axis.labels, strict=True):
        y = plot.y(tick)
        svg.add(f'<line x1="{left:.1f}" x2="{plot.right:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        svg.text(left - 6, y + 4, label, anchor="end")
    if unit:
        middle = (top + bottom) / 2
        shown = fit(unit, bottom - top)
        svg.text(unit_x, middle, shown, anchor="middle", rotate=-90, full=unit)
    return plot


def _in_plot_label(svg: _Svg, plot: _Plot, x: float, y: float, text: str, anchor: str, fill: str) -> None:
    """A label beside a horizontal line: above it, or below it when the line is at the top."""
    room = plot.right - plot.left - 8
    shown = fit(text, room / 2)
    ty = y - 4 if y - 4 - FONT >= plot.top else y + FONT + 2
    svg.text(x, ty, shown, anchor=anchor, fill=fill, full=text)


# ---------------------------------------------------------------------------------------------
# The history of a metric over a scenario's validations


def _connect(svg: _Svg, plot: _Plot, x, values) -> None:
    """A grey line through consecutive values (``x(index)`` places each); a missing value breaks
    the line rather than bridging the gap."""
    previous = None
    for index, value in enumerate(values):
        if _finite(value) is None:
            previous = None
            continue
        here = (x(index), plot.y(value))
        if previous:
            svg.add(
                f'<line x1="{previous[0]:.1f}" y1="{previous[1]:.1f}" x2="{here[0]:.1f}" y2="{here[1]:.1f}" '
                'stroke="#8c959f"/>'
            )
        previous = here
