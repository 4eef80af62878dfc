"""A minimal line chart in PIL: stacked panels sharing the x axis, ticks, grid and a legend.

Used for training curves where matplotlib is not installed (it is an optional dependency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Tableau-like colours: distinct on white and for the common colour-vision deficiencies.
SERIES_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
_AXIS = (40, 40, 40)
_GRID = (225, 225, 225)
_MARKER = (120, 120, 120)
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 72, 24, 30, 40


@dataclass
class Panel:
    """One chart: `series` maps a legend name to its (xs, ys) points.

    `min_span`: the y axis spans at least this, within `bounds` (the values' natural limits) where
    given, so a nearly constant series is not magnified into noise. `vlines`: labelled vertical
    markers {label: x} (e.g. where stage B starts)."""

    title: str
    series: dict[str, tuple[Sequence[float], Sequence[float]]] = field(default_factory=dict)
    min_span: float = 0.0
    bounds: tuple[float, float] | None = None
    vlines: dict[str, float] = field(default_factory=dict)


def y_range(panel: Panel) -> tuple[float, float]:
    """The y axis of a panel: the padded data range, widened to `min_span` and kept in `bounds`."""
    lo, hi = _padded_range([float(y) for _, ys in panel.series.values() for y in ys])
    if hi - lo < panel.min_span:
        mid, span = (lo + hi) / 2, panel.min_span
        lo, hi = mid - span / 2, mid + span / 2
        if panel.bounds is not None:
            b_lo, b_hi = panel.bounds
            if lo < b_lo:
                lo, hi = b_lo, b_lo + span
            elif hi > b_hi:
                lo, hi = b_hi - span, b_hi
    return lo, hi


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2, 2.5 or 5 x 10^k."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"tick range must be finite with lo < hi, got {lo}..{hi}")
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _padded_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi == lo:  # a constant series still needs a visible axis
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed bitmap font
        return ImageFont.load_default()


def render_panels(
    panels: Sequence[Panel],
    out_png: str | Path,
    *,
    width: int = 900,
    panel_height: int = 260,
    xlabel: str = "iter",
) -> Path:
    """Draw `panels` one above the other (shared x range) and save a PNG of
    `width x panel_height * len(panels)` pixels."""
    panels = [p for p in panels if any(len(xs) for xs, _ in p.series.values())]
    if not panels:
        raise ValueError("nothing to plot: every panel is empty")
    xs_all = [float(x) for p in panels for xs, _ in p.series.values() for x in xs]
    x_lo, x_hi = min(xs_all), max(xs_all)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    img = Image.new("RGB", (width, panel_height * len(panels)), "white")
    draw = ImageDraw.Draw(img)
    font, title_font = _font(12), _font(14)
    x_ticks = nice_ticks(x_lo, x_hi, target=8)
    for i, panel in enumerate(panels):
        top = i * panel_height
        box = (_MARGIN_LEFT, top + _MARGIN_TOP, width - _MARGIN_RIGHT, top + panel_height - _MARGIN_BOTTOM)
        y_lo, y_hi = y_range(panel)
        _draw_panel(draw, panel, box, (x_lo, x_hi), (y_lo, y_hi), x_ticks, font, title_font, xlabel)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    img.save(out_png)
    return out_png


def _draw_panel(draw, panel, box, x_range, y_range, x_ticks, font, title_font, xlabel) -> None:
    x0, y0, x1, y1 = box
    (x_lo, x_hi), (y_lo, y_hi) = x_range, y_range

    def px(x: float) -> float:
        return x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (y - y_lo) / (y_hi - y_lo) * (y1 - y0)

    for t in nice_ticks(y_lo, y_hi):
        y = py(t)
        draw.line([(x0, y), (x1, y)], fill=_GRID)
        draw.line([(x0 - 4, y), (x0, y)], fill=_AXIS)
        draw.text((x0 - 7, y), _fmt_tick(t), fill=_AXIS, font=font, anchor="rm")
    for t in x_ticks:
        if not x_lo <= t <= x_hi:
            continue
        x = px(t)
        draw.line([(x, y0), (x, y1)], fill=_GRID)
        draw.line([(x, y1), (x, y1 + 4)], fill=_AXIS)
        draw.text((x, y1 + 6), _fmt_tick(t), fill=_AXIS, font=font, anchor="mt")
    draw.rectangle(box, outline=_AXIS)
    draw.text(((x0 + x1) / 2, y0 - 8), panel.title, fill=_AXIS, font=title_font, anchor="mb")
    draw.text((x1, y1 + 22), xlabel, fill=_AXIS, font=font, anchor="rt")

    for label, xv in panel.vlines.items():
        if x_lo <= xv <= x_hi:
            x = px(xv)
            for ya in range(int(y0), int(y1), 8):  # dashed
                draw.line([(x, ya), (x, min(ya + 4, y1))], fill=_MARKER, width=1)
            draw.text((x + 3, y0 + 3), label, fill=_MARKER, font=font, anchor="lt")
    all_pts = []
    for k, (xs, ys) in enumerate(panel.series.values()):
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        pts = [(px(float(x)), py(float(y))) for x, y in zip(xs, ys, strict=True)]
        all_pts += pts
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2, joint="curve")
        if len(pts) <= 20:  # sparse series (evaluations) get markers so single points show
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
    _draw_legend(draw, list(panel.series), box, font, all_pts)


def _draw_legend(draw, names: list[str], box, font, points: list[tuple[float, float]]) -> None:
    x0, y0, x1, y1 = box
    widths = [draw.textlength(n, font=font) for n in names]
    line_h = 16
    w = 30 + max(widths) + 8
    h = line_h * len(names) + 8
    # the corner that hides the fewest data points (ties: top right first)
    corners = [(x1 - w - 6, y0 + 6), (x0 + 6, y0 + 6), (x1 - w - 6, y1 - h - 6), (x0 + 6, y1 - h - 6)]
    lx, ly = min(
        corners,
        key=lambda c: sum(c[0] - 4 <= x <= c[0] + w + 4 and c[1] - 4 <= y <= c[1] + h + 4 for x, y in points),
    )
    draw.rectangle([lx, ly, lx + w, ly + h], fill="white", outline=(160, 160, 160))
    for k, name in enumerate(names):
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        cy = ly + 4 + line_h * k + line_h / 2
        draw.line([(lx + 6, cy), (lx + 24, cy)], fill=color, width=3)
        draw.text((lx + 30, cy), name, fill=_AXIS, font=font, anchor="lm")
