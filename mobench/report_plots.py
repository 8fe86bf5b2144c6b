"""Geometry of the report's SVG plots: Pareto-front scatters and horizontal bar charts.

Everything here is numbers and plain strings computed in Python; the template turns them into
SVG elements, so every label still passes through jinja2's autoescaping. No plotting library,
no JavaScript: hover labels are SVG ``<title>`` elements, which browsers show as tooltips.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mobench.metrics import pareto_front

#: Colours of the built-in methods (Okabe–Ito, readable by colour-blind readers). Fixed by name so
#: that a method has the same colour in every report, not only across one report's plots.
METHOD_COLOURS = {
    "genarm": "#0072B2",
    "parm": "#D55E00",
    "uniarm": "#009E73",
    "mod_w2s": "#CC79A7",
    "mod": "#E69F00",
}
#: Colours for other methods, picked by a hash of the name (then the next free one in a report).
EXTRA_COLOURS = (
    "#56B4E9",
    "#8C564B",
    "#7F3C8D",
    "#17BECF",
    "#BCBD22",
    "#444444",
    "#E7298A",
    "#66A61E",
)
#: Marker shapes; runs of the same method in one table differ by shape, never by colour.
MARKERS = ("circle", "square", "triangle", "diamond", "triangle-down")


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """One colour per method name: fixed for built-in methods, hash-chosen for the rest.

    Args:
        methods: the method names appearing in a report (duplicates allowed).

    Returns:
        method name -> CSS colour. Deterministic: the same set of names always gives the same
        colours, and a built-in method's colour never depends on the other names.
    """
    colours: dict[str, str] = {}
    used = set()
    for name in sorted(set(methods)):
        if name in METHOD_COLOURS:
            colours[name] = METHOD_COLOURS[name]
            used.add(colours[name])
    for name in sorted(set(methods) - set(colours)):
        start = int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(EXTRA_COLOURS)
        # Linear probing keeps two unknown methods of one report apart while colours last.
        for step in range(len(EXTRA_COLOURS)):
            candidate = EXTRA_COLOURS[(start + step) % len(EXTRA_COLOURS)]
            if candidate not in used:
                break
        else:
            candidate = EXTRA_COLOURS[start]
        colours[name] = candidate
        used.add(candidate)
    return colours


# ------------------------------------------------------------------------------------ axes


@dataclass
class Axis:
    """A linear axis: data interval [lo, hi] mapped onto pixels [px_lo, px_hi]."""

    lo: float
    hi: float
    px_lo: float
    px_hi: float
    label: str
    ticks: list[tuple[float, str]] = field(default_factory=list)  # (pixel, text)

    def to_px(self, value: float) -> float:
        return self.px_lo + (value - self.lo) / (self.hi - self.lo) * (self.px_hi - self.px_lo)


def nice_step(span: float, target: int = 5) -> float:
    """A tick step of 1, 2 or 5 times a power of ten giving about ``target`` intervals."""
    raw = span / max(target, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    text = f"{value:.{decimals}f}"
    return "0" if text.lstrip("-") == f"{0:.{decimals}f}" else text


def make_axis(
    lo: float, hi: float, px_lo: float, px_hi: float, label: str, *, snap: bool = False
) -> Axis:
    """An axis covering [lo, hi] with round ticks.

    Args:
        lo: smallest value to show.
        hi: largest value to show.
        px_lo: pixel of the low end.
        px_hi: pixel of the high end.
        label: axis title.
        snap: extend the limits to the nearest ticks (bar charts, which start at 0); otherwise
            the limits are the data range padded by 5% on each side (scatters).
    """
    if not hi > lo:
        pad = max(abs(lo) * 0.05, 1e-3)
        lo, hi = lo - pad, hi + pad
    elif not snap:
        pad = 0.05 * (hi - lo)
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, target=5 if snap else 8)
    if snap:
        lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    axis = Axis(lo, hi, px_lo, px_hi, label)
    axis.ticks = [
        (axis.to_px(i * step), tick_label(i * step, step)) for i in range(first, last + 1)
    ]
    return axis


# ------------------------------------------------------------------------- Pareto scatter


@dataclass
class Marker:
    """One drawn point: its shape is ``circle`` (cx, cy, r) or a polygon (``points``)."""

    cx: float
    cy: float
    shape: str
    polygon: str  # SVG polygon points for non-circles; "" for circles
    filled: bool  # on the Pareto front (filled) or dominated (hollow)
    title: str  # hover label


@dataclass
class Series:
    label: str
    colour: str
    marker: str
    markers: list[Marker]
    front_path: str  # SVG path of the attained front (2 objectives), "" otherwise
    fill_path: str  # the closed region the front dominates down to the reference point


@dataclass
class ScatterPlot:
    title: str
    width: int
    height: int
    x: Axis
    y: Axis
    series: list[Series]
    ref_point: tuple[float, float]  # in pixels
    ref_title: str


@dataclass
class SeriesInput:
    """What a scatter needs from one run: its label, colour, marker and per-alpha points."""

    label: str
    colour: str
    marker: str
    alphas: np.ndarray  # (A, K)
    points: np.ndarray  # (A, K)


def _marker_polygon(shape: str, cx: float, cy: float, r: float) -> str:
    if shape == "square":
        s = r * 0.9
        corners = [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    elif shape == "triangle":
        corners = [(cx, cy - r * 1.15), (cx + r, cy + r * 0.75), (cx - r, cy + r * 0.75)]
    elif shape == "triangle-down":
        corners = [(cx, cy + r * 1.15), (cx + r, cy - r * 0.75), (cx - r, cy - r * 0.75)]
    elif shape == "diamond":
        corners = [(cx, cy - r * 1.2), (cx + r, cy), (cx, cy + r * 1.2), (cx - r, cy)]
    else:
        return ""
    return " ".join(f"{x:.2f},{y:.2f}" for x, y in corners)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _alpha_text(alpha: np.ndarray) -> str:
    return "(" + ", ".join(f"{a:g}" for a in alpha) + ")"


def scatter_plot(
    series: Sequence[SeriesInput],
    objectives: Sequence[str],
    dims: tuple[int, int],
    ref_point: np.ndarray,
    *,
    title: str,
    width: int = 410,
    height: int = 330,
) -> ScatterPlot:
    """Scatter of every run's per-alpha points on two objectives, fronts marked.

    With two objectives in total, each run's Pareto front is drawn as the staircase that bounds
    the region it dominates down to ``ref_point`` (the region whose area is its HV). With more
    objectives the plot is a projection: front membership is decided in all K objectives (filled
    markers), and no staircase is drawn because a projected front is not a 2-D front.

    Args:
        series: one entry per run.
        objectives: all K objective names.
        dims: the two objective indices shown (x, y).
        ref_point: (K,) common HV reference point, drawn as a cross.
        title: plot heading.
        width: SVG width in pixels.
        height: SVG height in pixels.
    """
    ix, iy = dims
    left, right, top, bottom = 64, 14, 12, 46
    every = np.concatenate([s.points[:, [ix, iy]] for s in series] + [ref_point[None, [ix, iy]]])
    x = make_axis(every[:, 0].min(), every[:, 0].max(), left, width - right, objectives[ix])
    y = make_axis(every[:, 1].min(), every[:, 1].max(), height - bottom, top, objectives[iy])
    drawn = []
    for s in series:
        on_front = set(int(i) for i in pareto_front(s.points))
        # Points that land on the same pixel (e.g. a guide too weak to move the answers) become
        # one marker whose hover label lists every alpha, instead of hiding under each other.
        spots: dict[tuple[float, float], list[int]] = {}
        for a, point in enumerate(s.points):
            cx, cy = round(x.to_px(point[ix]), 1), round(y.to_px(point[iy]), 1)
            spots.setdefault((cx, cy), []).append(a)
        markers = []
        for (cx, cy), members in spots.items():
            lines = []
            for a in members:
                values = ", ".join(f"{o} {_fmt(v)}" for o, v in zip(objectives, s.points[a]))
                state = "on the front" if a in on_front else "dominated"
                lines.append(f"alpha={_alpha_text(s.alphas[a])}: {values} ({state})")
            markers.append(
                Marker(
                    cx=cx,
                    cy=cy,
                    shape=s.marker,
                    polygon=_marker_polygon(s.marker, cx, cy, 5.0),
                    filled=any(a in on_front for a in members),
                    title=s.label + "\n" + "\n".join(lines),
                )
            )
        front_path = fill_path = ""
        if len(objectives) == 2:
            front_path, fill_path = _staircase(s.points, on_front, ref_point, x, y)
        drawn.append(Series(s.label, s.colour, s.marker, markers, front_path, fill_path))
    ref_title = "common reference point z = " + _alpha_text(ref_point)
    return ScatterPlot(
        title=title,
        width=width,
        height=height,
        x=x,
        y=y,
        series=drawn,
        ref_point=(x.to_px(ref_point[ix]), y.to_px(ref_point[iy])),
        ref_title=ref_title,
    )


def _staircase(
    points: np.ndarray, on_front: set[int], ref: np.ndarray, x: Axis, y: Axis
) -> tuple[str, str]:
    """The boundary of the union of boxes [ref, p] over front points p (2 objectives).

    Sorted by the first objective ascending (so the second descends), the boundary runs from
    (z1, y_0) right to p_0, down to y_1, right to p_1, ..., down to (x_last, z2).
    """
    front = sorted({(float(points[i, 0]), float(points[i, 1])) for i in on_front})
    front = [p for p in front if p[0] > ref[0] and p[1] > ref[1]]
    if not front:
        return "", ""
    corners = [(float(ref[0]), front[0][1]), front[0]]
    for x_next, y_next in front[1:]:
        corners.append((corners[-1][0], y_next))
        corners.append((x_next, y_next))
    corners.append((front[-1][0], float(ref[1])))
    px = [(x.to_px(a), y.to_px(b)) for a, b in corners]
    line = "M " + " L ".join(f"{a:.2f} {b:.2f}" for a, b in px)
    zx, zy = x.to_px(float(ref[0])), y.to_px(float(ref[1]))
    fill = line + f" L {zx:.2f} {zy:.2f} Z"
    return line, fill


# ------------------------------------------------------------------------------ bar chart


@dataclass
class Bar:
    label: str
    colour: str
    y: float
    width: float  # 0 when not measured
    value_text: str
    title: str
    measured: bool


@dataclass
class BarChart:
    title: str
    width: int
    height: int
    label_width: int
    bar_height: float
    axis: Axis
    bars: list[Bar]
    guide_line: tuple[float, str] | None  # (pixel x, text), e.g. the 1.0 of a ratio
    plot_top: float
    plot_bottom: float


def bar_chart(
    rows: Sequence[tuple[str, str, float | None]],
    *,
    title: str,
    unit: str,
    guide_value: float | None = None,
    guide_text: str = "",
    width: int = 560,
) -> BarChart:
    """Horizontal bars, one per (label, colour, value); a None value is written "not measured".

    Args:
        rows: (label, colour, value) per run.
        title: chart heading (says what is measured and whether lower is better).
        unit: appended to each value label.
        guide_value: a vertical dashed reference line (e.g. 1.0 for a time ratio).
        guide_text: its label.
        width: SVG width in pixels.
    """
    label_width, row_h, top, bottom, right = 170, 26, 8, 34, 90
    height = top + bottom + row_h * max(len(rows), 1)
    measured = [v for _, _, v in rows if v is not None]
    hi = max([*measured, guide_value or 0.0, 0.0])
    axis = make_axis(0.0, hi if hi > 0 else 1.0, label_width, width - right, unit, snap=True)
    bars = []
    for i, (label, colour, value) in enumerate(rows):
        y = top + i * row_h + 4
        if value is None:
            bars.append(Bar(label, colour, y, 0.0, "not measured", f"{label}: not measured", False))
        else:
            text = f"{_fmt(value)} {unit}".strip()
            bars.append(
                Bar(
                    label,
                    colour,
                    y,
                    axis.to_px(value) - label_width,
                    text,
                    f"{label}: {text}",
                    True,
                )
            )
    guide = None
    if guide_value is not None:
        guide = (axis.to_px(guide_value), guide_text)
    return BarChart(
        title, width, height, label_width, row_h - 8, axis, bars, guide, top, height - bottom
    )
