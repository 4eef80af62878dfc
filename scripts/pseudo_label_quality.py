"""How good a checkpoint's pseudo-labels are: the project's own filter (`make_pseudo_labels`) on images
whose ground truth the teacher was not trained on, for several score thresholds side by side.

python scripts/pseudo_label_quality.py RUN GT_JSON [--images N] [--threshold T ...] [overrides]

RUN: a run folder (its config.yaml and last checkpoint; the teacher's weights when it has them).
GT_JSON: COCO annotations of images in the run's `data.image_dir` (e.g. the full train annotations of a
generated dataset); only images in the run's `data.unlabeled_list` are used when it has one, the first
N (default 400). Each threshold is a `semi.score_threshold` on the class probability (default: GD's
0.7, then 0.3 and 0.8); the other filter settings are the run's. Views: RGB, and the
depth view when the run's teacher makes depth pseudo-labels. Prints per view and rule: pseudo-labels
kept per image, precision (mask IoU >= 0.5 with an instance of their class), on an object (of any
class) and recall (instances covered by a right pseudo-label).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch
from dgseg.pipeline.config.loading import load_config
from dgseg.pipeline.engine.checkpoint import load_checkpoint, resolve_checkpoint
from dgseg.pipeline.engine.evaluate import eval_setup
from dgseg.pipeline.semi.depth_view import render_depth_view
from dgseg.pipeline.semi.pseudo_label_quality import pseudo_label_counts, summarise
from dgseg.pipeline.semi.pseudo_labels import PseudoLabeler

DEFAULT_THRESHOLDS = [0.7, 0.3, 0.8]


def subset_json(gt_json: Path, unlabeled_list: str | None, n: int, out: Path) -> int:
    """The first `n` images of `gt_json` (only those of `unlabeled_list` when given) with their annotations."""
    gt = json.loads(gt_json.read_text())
    images = gt["images"]
    if unlabeled_list:
        names = {i["file_name"] for i in json.loads(Path(unlabeled_list).read_text())["images"]}
        images = [i for i in images if i["file_name"] in names]
    images = images[:n]
    if not images:
        raise SystemExit(f"{gt_json}: no image left (unlabelled list {unlabeled_list})")
    ids = {i["id"] for i in images}
    sub = dict(gt, images=images, annotations=[a for a in gt["annotations"] if a["image_id"] in ids])
    out.write_text(json.dumps(sub))
    return len(images)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("gt_json", type=Path)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--threshold", type=float, action="append", help="semi.score_threshold (repeatable)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rules = args.threshold or DEFAULT_THRESHOLDS
    base = load_config(args.run / "config.yaml", args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        sub = Path(tmp) / "gt.json"
        n = subset_json(args.gt_json, base.data.unlabeled_list, args.images, sub)
        cfg = load_config(args.run / "config.yaml", [*args.overrides, f"data.val_image_dir={base.data.image_dir}",
                                                     f"data.val_json={sub}"])  # fmt: skip
        ckpt_path = resolve_checkpoint(args.run)
        ckpt = load_checkpoint(ckpt_path)
        key = "teacher" if "teacher" in ckpt else "model"
        run = eval_setup(cfg, ckpt[key], f"{ckpt_path} [{key}]")
        labelers = {r: dataclasses.replace(PseudoLabeler.from_config(cfg.semi), score_threshold=r) for r in rules}
        views = ["rgb"] + (["depth"] if cfg.semi.enabled and cfg.semi.depth_pseudo_labels else [])
        totals = {(v, r): dict(kept=0, right=0, on_object=0, instances=0, recalled=0) for v in views for r in rules}
        for batch in run.loader:
            batch = batch.to(run.device)
            run.provider.fill(batch)
            size = tuple(batch.images.shape[-2:])
            for view in views:
                images = batch.images if view == "rgb" else render_depth_view(batch.depth, batch.valid)
                out = run.model(images, batch.features if run.provider.channels else None, ~batch.valid)
                for r, label in labelers.items():
                    c = pseudo_label_counts(label(out, size, batch.valid), batch.targets)
                    totals[(view, r)] = {k: totals[(view, r)][k] + c[k] for k in c}
    print(f"{ckpt_path}, {n} images of {args.gt_json}")
    print("| view | class threshold | kept per image | precision | on an object | recall |")
    print("|---|---|---|---|---|---|")
    for (view, thr), c in totals.items():
        s = summarise(c, n)
        print(f"| {view} | {thr:g} | {s['per_image']:.2f} | {s['precision']:.3f} | {s['on_object']:.3f} "
              f"| {s['recall']:.3f} |")


if __name__ == "__main__":
    main()
