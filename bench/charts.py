"""Small SVG charts for the benches, with no dependency: line charts (linear or log axes) and
grouped bar charts, each with axes, ticks, labels and a legend.

    from charts import Axis, Series, line_chart, bar_chart, write
    svg = line_chart("no-op build", Axis("icons", log=True), Axis("seconds", log=True),
                     [Series("no-op", ((11, 0.4), (500, 0.9)))])
    svg = bar_chart("bytes", Axis("icons"), ["11", "500"], Axis("KB"), [("WebP", [3.0, 140.0])])
    write(Path("bench/results/noop.svg"), svg)

The output is plain SVG 1.1 text (a white background, so it reads the same on a dark page), stable
for the same input: a chart committed to the repo changes only when its figures do. Every point
carries a <title>, which a browser shows as a tooltip with the exact value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

# Okabe-Ito (told apart with every common colour-vision deficiency), its yellow swapped for a wine
# red that reads on white
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9", "#000000", "#882255")
WIDTH, HEIGHT = 720, 430
LEFT, RIGHT, TOP, BOTTOM = 70, 210, 44, 66  # margins in px; the legend sits in the right one


@dataclass(frozen=True)
class Axis:
    label: str
    log: bool = False
    zero: bool = True  # a linear axis starts at zero (False: at a round value below the data)


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[tuple[float, float], ...]
    dashed: bool = False
    colour: str = ""  # empty: the next colour of the palette
    radius: float = 3.5  # of the dots; give dots that may coincide different sizes to see them all


@dataclass(frozen=True)
class Scale:
    """Maps a value in [lo, hi] (log10 of it on a log axis) to pixels in [start, end]."""

    lo: float
    hi: float
    log: bool
    start: float
    end: float

    def __call__(self, value: float) -> float:
        f = math.log10 if self.log else float
        span = f(self.hi) - f(self.lo) or 1.0
        return self.start + (f(value) - f(self.lo)) / span * (self.end - self.start)


def ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Round tick values covering [lo, hi]: decades on a log axis (with 2 and 5 between them when
    the data spans less than three decades), 1-2-5 steps giving 4-8 ticks on a linear one."""
    if log:
        first, last = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
        steps = (1.0,) if last - first >= 3 else (1.0, 2.0, 5.0)
        values = [m * 10.0**k for k in range(first, last + 1) for m in steps]
        below = max((v for v in values if v <= lo * (1 + 1e-9)), default=values[0])
        above = min((v for v in values if v > below and v >= hi * (1 - 1e-9)), default=values[-1] * 10)
        return [v for v in values if below <= v <= above] + ([above] if above > values[-1] else [])
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / 5
    step = min((m * 10.0 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    start = math.floor(lo / step + 1e-9) * step
    count = math.ceil((hi - start) / step - 1e-9)
    return [round(start + i * step, 12) for i in range(count + 1)]


def label(value: float) -> str:
    """A short tick label: 5k, 1.5M, 0.02, 250."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:.3g}"


def line_chart(title: str, x: Axis, y: Axis, series: Sequence[Series], note: str = "") -> str:
    """Lines with a dot per point (a one-point series is a dot: a scatter plot). On a log axis,
    points <= 0 cannot be drawn and are left out (the note should say so when it matters)."""
    drawn = [
        Series(
            s.label,
            tuple(p for p in s.points if (not x.log or p[0] > 0) and (not y.log or p[1] > 0)),
            s.dashed,
            s.colour or PALETTE[i % len(PALETTE)],
            s.radius,
        )
        for i, s in enumerate(series)
    ]
    xs = [p[0] for s in drawn for p in s.points]
    ys = [p[1] for s in drawn for p in s.points]
    if not xs:
        return _frame(title, note) + _text(LEFT + 10, TOP + 30, "no data", anchor="start") + "</svg>\n"
    x_ticks = ticks(min(xs), max(xs), x.log)
    y_ticks = ticks(min(ys) if y.log or not y.zero else min(0.0, min(ys)), max(ys), y.log)
    sx = Scale(x_ticks[0], x_ticks[-1], x.log, LEFT, WIDTH - RIGHT)
    sy = Scale(y_ticks[0], y_ticks[-1], y.log, HEIGHT - BOTTOM, TOP)
    parts = [_frame(title, note), _axes(x, y, [(sx(v), label(v)) for v in x_ticks], sy, y_ticks)]
    for s in drawn:
        colour = s.colour
        path = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in s.points)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for a, b in () if s.dashed else s.points:  # a dashed line is a fit or a limit: no dots
            parts.append(
                f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="{s.radius:g}" fill="{colour}" stroke="#ffffff">'
                f"<title>{escape(s.label)}: {a:g} -> {b:.4g}</title></circle>"
            )
    parts.append(_legend([(s.label, s.colour, "dashed" if s.dashed else "line") for s in drawn]))
    return "".join(parts) + "</svg>\n"


def bar_chart(
    title: str, x: Axis, groups: Sequence[str], y: Axis, series: Sequence[tuple[str, Sequence[float]]], note: str = ""
) -> str:
    """Grouped bars: one group per entry of `groups` (along x), one bar per series in each; a
    series holds one value per group. The y axis is linear from zero."""
    values = [v for _, vs in series for v in vs]
    y_ticks = ticks(0.0, max(values, default=1.0) or 1.0, False)
    sy = Scale(y_ticks[0], y_ticks[-1], False, HEIGHT - BOTTOM, TOP)
    slot = (WIDTH - RIGHT - LEFT) / max(1, len(groups))
    bar = slot * 0.8 / max(1, len(series))
    centres = [(LEFT + slot * (g + 0.5), name) for g, name in enumerate(groups)]
    parts = [_frame(title, note), _axes(Axis(x.label), y, centres, sy, y_ticks)]
    for i, (name, vs) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        for g, value in enumerate(vs):
            left = LEFT + slot * g + slot * 0.1 + bar * i
            parts.append(
                f'<rect x="{left:.1f}" y="{sy(value):.1f}" width="{bar * 0.92:.1f}" '
                f'height="{sy(0.0) - sy(value):.1f}" fill="{colour}">'
                f"<title>{escape(name)}, {escape(groups[g])}: {value:.4g}</title></rect>"
            )
    parts.append(_legend([(name, PALETTE[i % len(PALETTE)], "box") for i, (name, _) in enumerate(series)]))
    return "".join(parts) + "</svg>\n"


def write(path: Path, svg: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg, encoding="utf-8")


def _frame(title: str, note: str) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">'
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>'
        + _text(WIDTH / 2, 22, title, anchor="middle", size=15, bold=True)
    )
    return head + (_text(LEFT, HEIGHT - 8, note, anchor="start", size=10, colour="#555555") if note else "")


def _axes(x: Axis, y: Axis, x_marks: list[tuple[float, str]], sy: Scale, y_ticks: list[float]) -> str:
    """Grid lines and tick labels for y, tick labels for x at the given pixel positions, the frame."""
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = []
    for v in y_ticks:
        py = sy(v)
        parts.append(f'<line x1="{LEFT}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" stroke="#e0e0e0"/>')
        parts.append(_text(LEFT - 6, py + 4, label(v), anchor="end"))
    for px, text in x_marks:
        parts.append(f'<line x1="{px:.1f}" y1="{bottom}" x2="{px:.1f}" y2="{bottom + 5}" stroke="#333333"/>')
        parts.append(_text(px, bottom + 18, text, anchor="middle"))
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}" fill="none" stroke="#333333"/>'
    )
    if x.label:
        parts.append(_text((LEFT + right) / 2, bottom + 36, _title(x), anchor="middle"))
    middle = (TOP + bottom) / 2
    parts.append(
        f'<text x="16" y="{middle:.1f}" text-anchor="middle" transform="rotate(-90 16 {middle:.1f})">'
        f"{escape(_title(y))}</text>"
    )
    return "".join(parts)


def _title(axis: Axis) -> str:
    return axis.label + (" (log scale)" if axis.log else "")


def _legend(entries: list[tuple[str, str, str]]) -> str:
    """One row per (label, colour, mark): mark is "line", "dashed" or "box" (a bar's swatch)."""
    x, parts = WIDTH - RIGHT + 14, []
    for i, (name, colour, mark) in enumerate(entries):
        y = TOP + 8 + i * 20
        if mark == "box":
            parts.append(f'<rect x="{x + 4}" y="{y - 7}" width="14" height="14" fill="{colour}"/>')
        else:
            dash = ' stroke-dasharray="6 4"' if mark == "dashed" else ""
            parts.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{colour}" stroke-width="3"{dash}/>')
        parts.append(_text(x + 28, y + 4, name, anchor="start"))
    return "".join(parts)


def _text(
    x: float, y: float, text: str, anchor: str, size: int = 12, bold: bool = False, colour: str = "#222222"
) -> str:
    weight = ' font-weight="bold"' if bold else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{colour}"{weight}>'
        f"{escape(text)}</text>"
    )
