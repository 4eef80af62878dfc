"""Mask overlays and training-curve PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dgseg.pipeline.evaluation.visualize import (
    Panel,
    curve_series,
    draw_instances,
    plot_curves,
    read_log,
    save_instances_png,
    y_range,
)
from PIL import Image


def _scene():
    rng = np.random.default_rng(0)
    image = rng.integers(60, 200, (90, 130, 3), dtype=np.uint8)
    masks = np.zeros((3, 90, 130), bool)
    masks[0, 40:80, 10:60] = True
    masks[1, 45:85, 70:120] = True
    masks[2, 5:20, 100:125] = True
    pred = {
        "masks": torch.from_numpy(masks),
        "scores": torch.tensor([0.9, 0.8, 0.2]),
        "labels": torch.tensor([0, 1, 1]),
        "boxes": torch.zeros(3, 4),
    }
    return image, masks, pred


def test_overlay_png_has_image_size_and_changes_masked_pixels_only(tmp_path):
    image, masks, pred = _scene()
    path = save_instances_png(image, pred, tmp_path / "sub" / "pred.png", ["cat", "dog"], score_threshold=0.5)
    out = np.asarray(Image.open(path).convert("RGB"))
    assert out.shape == image.shape
    changed = np.any(out != image, axis=2)
    # inside each drawn mask (below its label), every pixel is tinted
    assert changed[60:80, 10:60].all() and changed[65:85, 70:120].all()
    # the instance under the threshold is not drawn, and the background is untouched
    assert not changed[5:20, 100:125].any()
    background = ~masks.any(0)
    background[:60] = False  # the labels, written at the masks' top-left corners, may overhang them
    assert background.sum() > 500
    assert not changed[background].any()
    # different instances get different colours
    assert not np.array_equal(out[70, 30], out[75, 100])


def test_overlay_accepts_a_float_tensor_and_pil_image_and_checks_size():
    image, _, pred = _scene()
    from_tensor = draw_instances(torch.from_numpy(image).permute(2, 0, 1).float() / 255, pred)
    from_pil = draw_instances(Image.fromarray(image), pred)
    assert np.array_equal(np.asarray(from_tensor), np.asarray(from_pil))
    with pytest.raises(ValueError, match="do not match the image size"):
        draw_instances(image[:50], pred)


def test_overlay_without_instances_returns_the_image():
    image, _, pred = _scene()
    empty = {"masks": torch.zeros(0, 90, 130, dtype=torch.bool), "scores": torch.zeros(0), "labels": torch.zeros(0)}
    assert np.array_equal(np.asarray(draw_instances(image, empty)), image)
    assert np.array_equal(np.asarray(draw_instances(image, pred, score_threshold=0.95)), image)


def _write_log(path, n=60):
    with open(path, "w") as f:
        f.write(json.dumps({"config": {"lr": 1e-4}}) + "\n")  # a header line without "iter"
        for i in range(0, n * 10, 10):
            rec = {"iter": i, "loss": 3.0 / (1 + i / 100), "loss_sup": 2.0 / (1 + i / 100), "lr": 1e-4}
            if i >= 300:
                rec["loss_unsup"] = 0.8
                rec["controller/weight"] = 0.5 + i / 2000
            if i % 100 == 0:
                rec["val/AP"] = i / 20
            f.write(json.dumps(rec) + "\n")
        f.write("\n")
        f.write(json.dumps({"iter": n * 10, "loss": float("nan")}) + "\n")  # a diverged step is skipped


def test_curve_series_groups_keys_into_panels(tmp_path):
    log = tmp_path / "log.jsonl"
    _write_log(log)
    panels = curve_series(read_log(log))
    assert [p.title for p in panels] == ["loss", "validation mask AP (%)", "depth controller weight"]
    assert list(panels[0].series) == ["loss", "loss_sup", "loss_unsup"]
    xs, ys = panels[0].series["loss"]
    assert len(xs) == 60 and xs[0] == 0 and ys[0] == 3.0
    assert panels[1].series["val/AP"][0] == [0, 100, 200, 300, 400, 500]
    assert panels[2].series["controller/weight"][0][0] == 300


def test_plot_curves_writes_one_panel_per_series_group(tmp_path):
    log = tmp_path / "log.jsonl"
    _write_log(log)
    out = plot_curves(log, tmp_path / "curves.png")
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > img.shape[1] * 0.5  # stacked panels, taller than a single chart


def test_plot_curves_without_controller_has_two_panels_and_errors_are_clear(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps({"iter": i, "loss": 1.0 / (i + 1), "val/AP": 2.0 * i}) for i in range(5)))
    assert len(curve_series(read_log(log))) == 2
    assert plot_curves(log, tmp_path / "c.png").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"iter": 0, "loss": 1}\n{"iter": 1, "loss": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        plot_curves(bad, tmp_path / "x.png")
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text('{"iter": 0, "lr": 1}\n')
    with pytest.raises(ValueError, match="no line has 'iter'"):
        plot_curves(nothing, tmp_path / "y.png")


def test_y_range_of_a_single_point_and_of_a_constant_series():
    assert y_range(Panel("x", {"a": ([5], [2.0]), "b": ([5], [2.0])})) == pytest.approx((1.8, 2.2))
    assert y_range(Panel("x", {"a": ([1, 2], [0.0, 0.0])})) == (-1.0, 1.0)


def _two_stage_log(path):
    """Stage A to iter 100 (loss ~1), stage B after (loss ~2, controller weight 0.5 +- 0.0015),
    teacher (val/) and student AP evaluated at 100 and 200."""
    lines = []
    for it in range(10, 201, 10):
        stage = "A" if it <= 100 else "B"
        rec = {"iter": it, "stage": stage, "loss": (1.0 if stage == "A" else 2.0) - it / 1000}
        if stage == "B":
            rec["controller/weight"] = 0.5 + 0.0015 * ((it // 10) % 3 - 1)
        lines.append(rec)
    lines += [{"iter": 100, "val/AP": 10.0}, {"iter": 200, "val/AP": 14.0}, {"iter": 200, "student/AP": 12.5}]
    path.write_text("\n".join(json.dumps(r) for r in lines))
    return path


def test_curves_mark_stage_b_plot_the_student_and_keep_the_weight_axis_wide(tmp_path):
    from dgseg.pipeline.evaluation.visualize import curves_figure, stage_b_start
    from matplotlib.figure import Figure

    records = read_log(_two_stage_log(tmp_path / "log.jsonl"))
    assert stage_b_start(records) == 100
    panels = curve_series(records)
    assert [p.title for p in panels] == ["loss", "validation mask AP (%)", "depth controller weight"]
    assert all(p.vlines == {"stage B": 100.0} for p in panels)
    assert panels[1].series["student/AP"] == ([200], [12.5])
    fig = curves_figure(panels)
    assert isinstance(fig, Figure)
    loss_ax, ap_ax, weight_ax = fig.axes
    assert weight_ax.get_ylim() == (0.0, 1.0)  # not a 0.003 range around 0.5
    assert y_range(panels[2]) == (0.0, 1.0)
    lo, hi = loss_ax.get_ylim()
    assert hi - lo < 1.5  # other panels keep their data range
    for ax in fig.axes:
        marks = [ln for ln in ax.get_lines() if ln.get_label() == "stage B"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [100, 100]
    labels = {ln.get_label(): ln for ln in ap_ax.get_lines()}
    assert {"val/AP", "student/AP"} <= set(labels)
    assert list(labels["student/AP"].get_ydata()) == [12.5]
    assert plot_curves(tmp_path / "log.jsonl", tmp_path / "curves.png").is_file()
