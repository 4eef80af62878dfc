"""A paper-scale dry run on the CPU: `configs/coco_5pct.yaml` as shipped, apart from paths, iteration
counts and sizes, on a generated COCO-shaped set (80 category ids with COCO's gaps, 640x480 and
480x640 images), depth from the `tiny` estimator in place of vits. Catches what only the paper
configs exercise: category-id gaps, frozen BN from a weights file, the step schedule per stage,
test-time cap, both evaluations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from dgseg.depth_cache.images import merge_records, records_from_json
from dgseg.depth_cache.precompute import run_precompute
from dgseg.pipeline.config.loading import load_config
from dgseg.pipeline.data.splits import make_splits
from dgseg.pipeline.engine.checkpoint import load_checkpoint
from dgseg.pipeline.engine.evaluate import evaluate_checkpoint
from dgseg.pipeline.train import train
from PIL import Image

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _coco_like(root: Path, split: str, n: int, seed: int) -> Path:
    """`n` images of 640x480 (every third portrait) with 1-3 rectangles each, COCO polygon annotations."""
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        h, w = (640, 480) if i % 3 == 2 else (480, 640)
        img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            y0, x0 = int(rng.integers(0, h - 200)), int(rng.integers(0, w - 200))
            y1, x1 = y0 + int(rng.integers(60, 200)), x0 + int(rng.integers(60, 200))
            cat = COCO_IDS[int(rng.integers(0, 8)) * 10 + 9]  # a few classes, ids up to 90
            img[y0:y1, x0:x1] = rng.integers(80, 255, 3)
            anns.append({"id": len(anns) + 1, "image_id": seed * 1000 + i, "category_id": cat, "iscrowd": 0,
                         "area": float((y1 - y0) * (x1 - x0)), "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
        name = f"{seed * 1000 + i:012d}.jpg"
        Image.fromarray(img).save(root / split / name, quality=90)
        images.append({"id": seed * 1000 + i, "file_name": name, "height": h, "width": w})
    cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in COCO_IDS]
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.mark.slow
def test_coco_5pct_config_runs_both_stages_on_a_coco_shaped_set(tmp_path):
    train_json = _coco_like(tmp_path, "train2017", 12, seed=1)
    val_json = _coco_like(tmp_path, "val2017", 2, seed=2)
    make_splits(train_json, tmp_path / "splits", percents=[25.0], seeds=[0], unlabeled_includes_labeled=False)
    weights = tmp_path / "resnet18.pth"  # a local backbone file, so the frozen-BN path runs as at paper scale
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    run = tmp_path / "run"
    overrides = [  # paths
        f"data.image_dir={tmp_path}/train2017", f"data.val_image_dir={tmp_path}/val2017", f"data.val_json={val_json}",
        f"data.train_json={tmp_path}/splits/instances_train2017_25pct_seed0_labeled.json",
        f"data.unlabeled_list={tmp_path}/splits/instances_train2017_25pct_seed0_unlabeled.json",
        f"depth.cache.root={tmp_path}/caches", f"model.backbone_weights={weights}", f"train.output_dir={run}",
        # iteration counts
        "semi.teacher_iters=5", "train.max_iter=10", "semi.burn_in_iter=2", "train.checkpoint_period=2",
        "train.eval_period=0", "train.log_period=1",
        # CPU sizes: tiny estimator in place of vits, resnet18, a small decoder, 128-px canvas, batch 2
        "depth.estimator.name=tiny", "depth.estimator.weights=null", "depth.estimator.input_size=56",
        "depth.estimator.device=cpu", "depth.cache.num_workers=0", "model.backbone=resnet18",
        "model.hidden_dim=32", "model.mask_dim=32", "model.num_queries=10", "model.nheads=2",
        "model.dim_feedforward=64", "model.dec_layers=2", "model.enc_layers=1", "model.train_num_points=256",
        "data.image_size=128", "data.test_size=160", "data.num_workers=0", "train.batch_size=2",
        "semi.unlabeled_batch_size=2", "semi.min_mask_area=4", "semi.score_threshold=0.0", "eval.batch_size=2",
        "train.device=cpu",
    ]
    cfg = load_config(CONFIGS / "coco_5pct.yaml", overrides)
    shipped = load_config(CONFIGS / "coco_5pct.yaml")
    # what the dry run keeps from the paper config
    assert cfg.data.num_classes == 80 and cfg.train.step_fractions == shipped.train.step_fractions
    assert cfg.model.backbone_norm == "frozen" and cfg.data.test_max_size == 1333
    assert cfg.semi.student_init == shipped.semi.student_init == "scratch"
    records = merge_records([records_from_json(train_json, tmp_path / "train2017"),
                             records_from_json(val_json, tmp_path / "val2017")])
    run_precompute(records, cfg.depth.estimator, cfg.depth.cache, progress=False)

    train(cfg)
    rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    lr = {r["iter"]: r["lr"] / cfg.train.lr for r in rows if "lr" in r}
    # each stage of 5 steps decays at round(0.889 * 5) = its step 4 (the 5th); 0.963 * 5 rounds to its end
    assert [lr[i] for i in range(1, 11)] == pytest.approx([1.0] * 4 + [0.1] + [1.0] * 4 + [0.1])
    assert {r.get("stage") for r in rows if "stage" in r} == {"A", "B"}
    # a long run keeps the config's few newest full checkpoints (5 were written) and ends with its final weights
    assert shipped.train.keep_checkpoints == 3
    assert sorted(p.name for p in run.glob("model_0*.pth")) == [f"model_{i:07d}.pth" for i in (6, 8, 10)]
    assert (run / "model_final.pth").is_file() and (run / "model_final.safetensors").is_file()
    ckpt = load_checkpoint(run / "model_0000010.pth")
    assert not any("num_batches_tracked" in k for k in ckpt["model"] if k.startswith("backbone."))  # frozen BN

    metrics = evaluate_checkpoint(cfg, run, tmp_path / "eval", which="both")
    assert metrics["weights"] == "teacher" and metrics["student"]["weights"] == "student"
    results = json.loads((tmp_path / "eval/results.json").read_text())
    assert results and {r["category_id"] for r in results} <= set(COCO_IDS)  # COCO's ids, gaps and all
