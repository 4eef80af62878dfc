"""`evaluate` and `predict` on a checkpoint of a tiny run."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from pipeline.engine.evaluate import evaluate_checkpoint
from pipeline.engine.predict import predict_images
from pipeline.engine.trainer import train


def test_evaluate_writes_coco_results_and_predict_draws(tiny_cache, tiny_config, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(tiny_cache, run, "train.max_iter=2")
    train(cfg)
    metrics = evaluate_checkpoint(cfg, run, tmp_path / "eval")  # a run folder means its last checkpoint
    assert {"AP", "AP50", "AP75", "per_class_AP"} <= set(metrics)
    results = json.loads((tmp_path / "eval/results.json").read_text())
    assert results, "an untrained model still proposes its top-k detections"
    gt = COCO(str(tiny_cache / "annotations/val.json"))
    dt = gt.loadRes(results)  # readable by any COCO tool
    assert set(dt.getImgIds()) <= set(gt.getImgIds())
    saved = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert saved["AP"] == metrics["AP"]

    images = sorted((tiny_cache / "images/val").glob("*.png"))[:2]
    out = tmp_path / "pred"
    written = predict_images(cfg, run / "model_0000002.pth", images, out, score_threshold=0.0)
    assert [p.name for p in written] == [p.stem + ".png" for p in images]
    for src, dst in zip(images, written, strict=True):
        a, b = np.asarray(Image.open(src).convert("RGB")), np.asarray(Image.open(dst).convert("RGB"))
        assert a.shape == b.shape and (a != b).any()  # masks were drawn over the image
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == 2 and all(len(r["scores"]) == len(r["segmentations"]) for r in records)
