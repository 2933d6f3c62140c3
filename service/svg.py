"""Charts as inline SVG, drawn on the server for the dashboard: bars and lines, nothing else.

Each function returns the markup of one ``<svg>`` (``markupsafe.Markup``: every text in it is
escaped here). The viewBox is fixed and the width is 100%, so a chart scales with its page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 56, 16, 36  # margins for the axes' labels
COLOURS = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280")


@dataclass
class Series:
    """One line: y values at x values; ``axis`` "right" puts it on a second scale (e.g. loss beside NDCG)."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    axis: str = "left"
    colour: str = ""
    points: list[tuple[float, float]] = field(init=False)

    def __post_init__(self) -> None:
        self.points = [(float(x), float(y)) for x, y in zip(self.xs, self.ys) if y is not None and math.isfinite(y)]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e3:
        return f"{value / 1e3:.3g}k"
    return f"{value:.3g}"


def _span(values: Sequence[float], zero: bool) -> tuple[float, float]:
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if zero:
        low = min(low, 0.0)
    if high == low:  # a flat line still needs a scale
        pad = (abs(high) or 1.0) * 0.5
        high, low = high + pad, low if zero else low - pad
    return low, high


def _svg(label: str, body: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>' + "".join(body) + "</svg>"
    )


def _axis_ticks(low: float, high: float, x: float, anchor: str, colour: str = "#555", log: bool = False) -> list[str]:
    out = []
    for n in range(5):
        value = low + (high - low) * n / 4
        y = HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * n / 4
        text = _label(10 ** value if log else value)
        out.append(f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="{anchor}" font-size="11" fill="{colour}">{escape(text)}</text>')
        if anchor == "end":
            out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e2e8f0"/>')
    return out


def bar_chart(label: str, categories: Sequence[str], values: Sequence[float], *, colour: str = COLOURS[0]) -> Markup:
    """Vertical bars, one per category, with the category under each (every nth when they are many)."""
    values = [float(v) for v in values]
    low, high = _span(values, zero=True)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    body = _axis_ticks(low, high, LEFT - 6, "end")
    n = max(len(values), 1)
    step = plot_w / n
    label_w = 6.5 * max((len(c) for c in categories), default=1) + 8  # 11 px text: ~6.5 px a character
    every = max(1, math.ceil(n * label_w / plot_w))  # every nth label, so that none overlaps the next
    for i, (category, value) in enumerate(zip(categories, values)):
        h = plot_h * (value - low) / (high - low)
        x = LEFT + i * step
        body.append(f'<rect x="{x + step * 0.1:.1f}" y="{TOP + plot_h - h:.1f}" width="{step * 0.8:.1f}" height="{h:.1f}" '
                    f'fill="{colour}"><title>{escape(category)}: {escape(_label(value))}</title></rect>')
        if i % every == 0:
            body.append(f'<text x="{x + step / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11" '
                        f'fill="#555">{escape(category)}</text>')
    return _svg(label, body)


def line_chart(label: str, series: Sequence[Series], *, x_label: str = "", marker_x: float | None = None,
               marker_label: str = "", log_y: bool = False) -> Markup:
    """Lines over a shared x axis; a second y scale on the right for series with ``axis="right"``;
    ``marker_x`` draws a dashed vertical line (e.g. the kept epoch); ``log_y`` plots log10 of positive values."""
    def ys(s: Series) -> list[float]:
        return [math.log10(y) if log_y else y for _, y in s.points if not log_y or y > 0]

    xs = [x for s in series for x, _ in s.points] or [0.0, 1.0]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_high = x_low + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    scales = {axis: _span([y for s in series if s.axis == axis for y in ys(s)], zero=False) for axis in ("left", "right")}
    body: list[str] = []
    for axis, (low, high) in scales.items():
        if any(s.axis == axis for s in series):
            colour = next(s.colour or COLOURS[i % len(COLOURS)] for i, s in enumerate(series) if s.axis == axis)
            body += _axis_ticks(low, high, LEFT - 6 if axis == "left" else WIDTH - RIGHT + 6,
                                "end" if axis == "left" else "start", colour, log=log_y)
    whole = all(float(x).is_integer() for x in xs)  # epochs, ranks: ticks at whole numbers
    for n in range(5):
        value = x_low + (x_high - x_low) * n / 4
        value = round(value) if whole else value
        body.append(f'<text x="{LEFT + plot_w * (value - x_low) / (x_high - x_low):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11" '
                    f'fill="#555">{escape(_label(value))}</text>')
    if x_label:
        body.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 4}" text-anchor="middle" font-size="11" fill="#555">'
                    f'{escape(x_label)}</text>')

    def at(x: float, y: float, axis: str) -> tuple[float, float]:
        low, high = scales[axis]
        return LEFT + plot_w * (x - x_low) / (x_high - x_low), TOP + plot_h - plot_h * (y - low) / (high - low)

    for i, s in enumerate(series):
        colour = s.colour or COLOURS[i % len(COLOURS)]
        points = [(x, math.log10(y) if log_y else y) for x, y in s.points if not log_y or y > 0]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in (at(x, y, s.axis) for x, y in points))
        body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"><title>{escape(s.name)}</title></polyline>')
        if len(points) <= 60:  # dots only where they stay apart
            body += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}"/>' for px, py in (at(x, y, s.axis) for x, y in points)]
        body.append(f'<text x="{LEFT + 8 + 150 * i:.1f}" y="{TOP + 12}" font-size="12" fill="{colour}">{escape(s.name)}</text>')
    if marker_x is not None:
        mx, _ = at(marker_x, scales["left"][0], "left")
        body.append(f'<line class="marker" x1="{mx:.1f}" x2="{mx:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#1a202c" '
                    f'stroke-dasharray="4 3"><title>{escape(marker_label)}</title></line>')
        body.append(f'<text x="{mx + 4:.1f}" y="{TOP + plot_h - 6}" font-size="11" fill="#1a202c">{escape(marker_label)}</text>')
    return _svg(label, body)
