"""Pictures: predicted masks drawn over an image (`cli.py predict`), and training curves.

`draw_instances` draws with PIL; `plot_curves` with matplotlib (a dependency), through a `Figure`
without pyplot, so no global backend or figure state is touched.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Panels of the curve plot and the JSONL keys each one draws (absent keys are skipped,
# and a panel with no key present is left out). In stage B `val/` is the teacher (the kept model)
# and `student/` the student, drawn beside it when logged.
CURVE_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss", "loss_sup", "loss_unsup")),
    ("validation mask AP (%)", ("val/AP", "val/AP50", "val/AP75", "student/AP", "student/AP50")),
    ("depth controller weight", ("controller/weight",)),
)
# y-axis options per panel: the weight lives in [0, 1]; its axis shows all of it rather than
# magnifying a 0.003 wobble
PANEL_AXES: dict[str, dict[str, Any]] = {
    "depth controller weight": {"min_span": 1.0, "bounds": (0.0, 1.0)},
}
STAGE_B_LABEL = "stage B"


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
    values = [float(y) for _, ys in panel.series.values() for y in ys]
    lo, hi = min(values), max(values)
    pad = (abs(lo) * 0.1 or 1.0) if hi == lo else (hi - lo) * 0.05  # a constant series still needs an axis
    lo, hi = lo - pad, hi + pad
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


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed bitmap font
        return ImageFont.load_default()


def instance_color(index: int) -> tuple[int, int, int]:
    """A bright colour per instance; golden-ratio hue steps keep neighbours far apart."""
    hue = (0.13 + index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _image_array(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """`(H, W, 3)` uint8 from a PIL image, an `(H, W, 3)` uint8 array or a `(3, H, W)` float
    tensor in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, H, W) in [0, 1], got shape {tuple(t.shape)}")
        return (t.float().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"an image array must be (H, W, 3) uint8, got {arr.dtype} {arr.shape}")
    return arr.copy()


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it (the image border counts as outside)."""
    p = np.pad(mask, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def draw_instances(
    image: Image.Image | np.ndarray | torch.Tensor,
    prediction: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    *,
    score_threshold: float = 0.5,
    alpha: float = 0.5,
    max_instances: int = 100,
) -> Image.Image:
    """The image with each instance's mask blended in its own colour, outlined, and labelled
    "class score" at its top-left corner.

    `prediction`: `masks (N, H, W)` bool at the image's size, `scores (N,)`, `labels (N,)`
    contiguous class indices (names from `class_names`, else the index).
    """
    arr = _image_array(image)
    h, w = arr.shape[:2]
    masks = prediction["masks"]
    masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    scores = np.asarray(
        prediction["scores"].cpu() if isinstance(prediction["scores"], torch.Tensor) else prediction["scores"]
    )
    labels = np.asarray(
        prediction["labels"].cpu() if isinstance(prediction["labels"], torch.Tensor) else prediction["labels"]
    )
    if masks.ndim != 3 or (masks.shape[0] and masks.shape[1:] != (h, w)):
        raise ValueError(f"masks {tuple(masks.shape)} do not match the image size {h}x{w} (expected (N, {h}, {w}))")
    keep = np.nonzero(scores >= score_threshold)[0]
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_instances]
    out = arr.astype(np.float32)
    # Paint the best instance last so it stays on top; colours follow the score rank.
    order = list(enumerate(keep))[::-1]
    for rank, k in order:
        m = masks[k].astype(bool)
        color = np.array(instance_color(rank), dtype=np.float32)
        out[m] = out[m] * (1 - alpha) + color * alpha
        out[_boundary(m)] = color
    result = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    font = _font(max(10, min(h, w) // 30))
    for rank, k in order:
        ys, xs = np.nonzero(masks[k])
        if ys.size == 0:
            continue
        label = int(labels[k])
        name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)
        text = f"{name} {float(scores[k]):.2f}"
        x, y = int(xs.min()), int(ys.min())
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        # keep the label inside the picture
        dx, dy = min(0, w - 1 - right), min(0, h - 1 - bottom)
        box = (left + dx - 1, top + dy - 1, right + dx + 1, bottom + dy + 1)
        draw.rectangle(box, fill=instance_color(rank))
        draw.text((x + dx, y + dy), text, fill=(0, 0, 0), font=font)
    return result


def save_instances_png(
    image: Image.Image | np.ndarray | torch.Tensor,
    prediction: Mapping[str, Any],
    path: str | Path,
    class_names: Sequence[str] | None = None,
    **kwargs: Any,
) -> Path:
    """`draw_instances` written to a PNG file (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_instances(image, prediction, class_names, **kwargs).save(path, format="PNG")
    return path


def read_log(log_jsonl_path: str | Path) -> list[dict]:
    """The records of a JSONL training log; a line that is not a JSON object is an error
    naming the file and line. Blank lines are skipped."""
    path = Path(log_jsonl_path)
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON ({err})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{n}: a log line must be a JSON object, got {type(rec).__name__}")
            records.append(rec)
    return records


def stage_b_start(records: Sequence[dict]) -> float | None:
    """The iteration where stage B (teacher-student) starts: the last stage-A record's "iter" when the
    log has both stages, else None. (The loss doubles there by design: unsupervised terms join.)"""
    a = [r["iter"] for r in records if r.get("stage") == "A" and _is_number(r.get("iter"))]
    b = [r["iter"] for r in records if r.get("stage") == "B" and _is_number(r.get("iter"))]
    before = [x for x in a if b and x <= min(b)]
    return float(max(before)) if before else None


def curve_series(records: Sequence[dict]) -> list[Panel]:
    """Group the log's finite numeric values by `CURVE_PANELS`, against "iter"; every panel marks
    the start of stage B."""
    panels = []
    boundary = stage_b_start(records)
    for title, keys in CURVE_PANELS:
        panel = Panel(title, **PANEL_AXES.get(title, {}))
        if boundary is not None:
            panel.vlines[STAGE_B_LABEL] = boundary
        for key in keys:
            pts = [
                (r["iter"], r[key])
                for r in records
                if _is_number(r.get("iter")) and _is_number(r.get(key)) and math.isfinite(r[key])
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                panel.series[key] = (list(xs), list(ys))
        if panel.series:
            panels.append(panel)
    return panels


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_curves(log_jsonl_path: str | Path, out_png: str | Path) -> Path:
    """The loss / AP / controller-weight curves of a training run, one panel each, to PNG.

    Reads a JSONL log whose lines are dicts with "iter" and any of the keys in
    `CURVE_PANELS`; lines without "iter" are skipped.
    """
    panels = curve_series(read_log(log_jsonl_path))
    if not panels:
        keys = sorted({k for _, ks in CURVE_PANELS for k in ks})
        raise ValueError(f"{log_jsonl_path}: no line has 'iter' and a numeric value for any of {keys}")
    return save_figure(curves_figure(panels), out_png)


def save_figure(fig, out_png: str | Path) -> Path:
    """Write a matplotlib `Figure` to PNG (its folder made if needed)."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png")
    return out_png


def curves_figure(panels: list[Panel]):
    """The matplotlib `Figure` of `curve_series` panels (one axes each, shared x)."""
    # Figure without pyplot: no global backend or figure state is touched.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 2.6 * len(panels)), dpi=100)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        for name, (xs, ys) in panel.series.items():
            ax.plot(xs, ys, label=name, marker="o" if len(xs) <= 50 else None, markersize=3)
        for label, x in panel.vlines.items():
            ax.axvline(x, color="0.45", linestyle="--", linewidth=1, label=label)
        ax.set_ylim(*y_range(panel))
        ax.set_title(panel.title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    axes[-1].set_xlabel("iter")
    fig.tight_layout()
    return fig
