"""COCO mask AP through pycocotools `COCOeval(iouType="segm")`.

Metrics are percentages in 0..100 (the detectron2 convention): `AP` is pycocotools' AP@[.5:.95]
x 100. A metric that pycocotools cannot define (it reports -1, e.g. `APl` where no ground truth
is large, or the AP of a class absent from the evaluated images) is NaN here, and `null` in the
saved JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# Order of COCOeval.stats[:6] for bbox/segm.
MAIN_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def load_coco_gt(path: str | Path) -> COCO:
    """Read a COCO annotation file quietly, with a clear error for a missing or malformed one."""
    path = Path(path)
    try:
        with open(path) as f:
            dataset = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: COCO annotation file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(dataset, dict) or not all(k in dataset for k in ("images", "annotations", "categories")):
        raise ValueError(f"{path}: a COCO annotation file needs 'images', 'annotations' and 'categories'")
    return coco_from_dict(dataset)


def coco_from_dict(dataset: dict) -> COCO:
    """A pycocotools `COCO` index over an in-memory annotation dict (no file, no prints)."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _percent(value: float) -> float:
    return float(value) * 100.0 if value > -1 else math.nan


def _empty_results_coco(coco_gt: COCO) -> COCO:
    """A detections index with no detections: `loadRes([])` crashes, COCOeval on this gives AP 0."""
    return coco_from_dict(
        {
            "images": list(coco_gt.dataset["images"]),
            "categories": list(coco_gt.dataset["categories"]),
            "annotations": [],
        }
    )


def evaluate_segm(
    coco_gt: COCO,
    results: Sequence[dict],
    image_ids: Iterable[int] | None = None,
    *,
    verbose: bool = False,
    class_agnostic: bool = False,
) -> dict:
    """COCO mask AP of `results` (COCO results format, RLE segmentations) against `coco_gt`.

    `image_ids`: evaluate on these images only (e.g. the images actually predicted); None = all
    images of `coco_gt`. Returns `{"AP", "AP50", "AP75", "APs", "APm", "APl": float in 0..100,
    "per_class_AP": {category name: float}, "num_images": int, "num_detections": int}`.

    Detections are ranked by the mask area, not their box: any `bbox` in the results is dropped
    before `loadRes`, which would otherwise take the box area as the instance area and so change
    which detections count as small/medium/large (detectron2 does the same). AP/AP50/AP75 do not
    depend on it. An empty `results` gives AP 0 (pycocotools' `loadRes` crashes on it).

    `class_agnostic`: COCOeval with `useCats = 0`, every detection matched against every instance
    whatever the classes: how good the masks are, apart from their labels ("per_class_AP" is empty).
    """
    gt_ids = set(coco_gt.getImgIds())
    unknown = sorted({r["image_id"] for r in results} - gt_ids)
    if unknown:
        raise ValueError(
            f"{len(unknown)} result image ids are not in the ground truth, e.g. {unknown[:5]} "
            "(results must use the annotation file's integer image ids)"
        )
    if image_ids is None:
        eval_ids = sorted(gt_ids)
    else:
        eval_ids = sorted({int(i) for i in image_ids})
        missing = sorted(set(eval_ids) - gt_ids)
        if missing:
            raise ValueError(f"{len(missing)} image ids to evaluate are not in the ground truth, e.g. {missing[:5]}")

    # Shallow copies: loadRes writes area/id/iscrowd into each dict it is given.
    dets = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_dt = coco_gt.loadRes(dets) if dets else _empty_results_coco(coco_gt)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="segm")
        coco_eval.params.imgIds = eval_ids
        if class_agnostic:
            coco_eval.params.useCats = 0
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    if verbose:
        print(out.getvalue(), end="")

    metrics: dict = {name: _percent(coco_eval.stats[i]) for i, name in enumerate(MAIN_METRICS)}
    metrics["per_class_AP"] = {} if class_agnostic else _per_class_ap(coco_eval, coco_gt)
    metrics["num_images"] = len(eval_ids)
    eval_set = set(eval_ids)
    metrics["num_detections"] = sum(1 for r in results if r["image_id"] in eval_set)
    return metrics


def _per_class_ap(coco_eval: COCOeval, coco_gt: COCO) -> dict[str, float]:
    """AP@[.5:.95] of each category over all areas at the largest maxDets, as `summarize` does."""
    # precision: (iou thresholds, recall thresholds, categories, area ranges, max dets); -1 = undefined
    precision = coco_eval.eval["precision"]
    per_class = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        name = coco_gt.cats[cat_id]["name"]
        if name in per_class:  # two categories share a name: keep both, told apart by id
            name = f"{name} ({cat_id})"
        per_class[name] = float(np.mean(p)) * 100.0 if p.size else math.nan
    return per_class


def _fmt(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def format_table(metrics: dict) -> str:
    """The main metrics and per-class AP as a plain-text table (values in percent)."""
    names = [n for n in MAIN_METRICS if n in metrics]
    widths = [max(len(n), 6) for n in names]
    lines = [
        "  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True)),
        "  ".join(_fmt(metrics[n]).rjust(w) for n, w in zip(names, widths, strict=True)),
    ]
    per_class = metrics.get("per_class_AP") or {}
    if per_class:
        width = max(len("category"), *(len(n) for n in per_class))
        lines += ["", f"{'category'.ljust(width)}  {'AP':>6}", f"{'-' * width}  {'-' * 6}"]
        lines += [f"{name.ljust(width)}  {_fmt(ap):>6}" for name, ap in per_class.items()]
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def save_metrics(metrics: dict, path: str | Path) -> Path:
    """Write metrics as strict JSON (NaN becomes null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_json_safe(metrics), f, indent=2, allow_nan=False)
        f.write("\n")
    return path
