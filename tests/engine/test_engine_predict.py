"""`evaluate`, `predict` and the in-memory `Predictor` on checkpoints of a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dgseg.pipeline.engine.evaluate import evaluate_checkpoint
from dgseg.pipeline.engine.predict import predict_images
from dgseg.pipeline.engine.predictor import Prediction, Predictor
from dgseg.pipeline.evaluation.results import decode_masks
from dgseg.pipeline.model.build import build_model
from dgseg.pipeline.train import train
from PIL import Image
from pycocotools.coco import COCO


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
    # COCO results like evaluate's: the val images' own ids, the dataset's category ids, RLE
    pred_results = json.loads((out / "results.json").read_text())
    by_name = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
    assert {r["image_id"] for r in pred_results} == {by_name[p.name] for p in images}
    assert all(r["image_id"] == by_name[r["file_name"]] for r in pred_results)
    assert {r["category_id"] for r in pred_results} <= set(gt.getCatIds())
    gt.loadRes(pred_results)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["instances"] for r in summary["images"]] == [
        sum(r["file_name"] == p.name for r in pred_results) for p in images]


def _untrained_checkpoint(cfg, path):
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes, {"depth_s8": 1, "depth_s16": 1})
    torch.save({"model": model.state_dict()}, path)
    return path


def _remapped_val(src, dst, offset: int = 40):
    """The val annotations with category ids 41, 42, 43 instead of 1, 2, 3."""
    data = json.loads(src.read_text())
    for c in data["categories"]:
        c["id"] += offset
    for a in data["annotations"]:
        a["category_id"] += offset
    dst.write_text(json.dumps(data))
    return dst


def test_predictor_returns_predictions_in_memory(tiny_cache, tiny_config, tmp_path):
    val = _remapped_val(tiny_cache / "annotations/val.json", tmp_path / "val.json")
    cfg = tiny_config(tiny_cache, tmp_path / "run", f"data.val_json={val}", "train.device=cpu")
    predictor = Predictor(cfg, _untrained_checkpoint(cfg, tmp_path / "m.pth"))
    path = sorted((tiny_cache / "images/val").glob("*.png"))[0]
    by_path = predictor(path)
    assert isinstance(by_path, Prediction) and by_path.name == path.stem
    h, w = np.asarray(Image.open(path)).shape[:2]
    assert by_path.size == (h, w) and by_path.masks.shape[1:] == (h, w) and len(by_path) > 0
    assert torch.all(by_path.scores[:-1] >= by_path.scores[1:])
    # the dataset's own category ids, in the order the model's classes map to them
    assert by_path.category_ids == [41 + int(k) for k in by_path.labels]
    assert set(by_path.category_names) <= {"ellipse", "rectangle", "triangle"}
    # the same image as a PIL image / array (the files depth source reads the depth map by name)
    for image in (Image.open(path), np.asarray(Image.open(path).convert("RGB"))):
        other = predictor(image, name=path.stem)
        torch.testing.assert_close(other.scores, by_path.scores)
        assert torch.equal(other.masks, by_path.masks)
    with pytest.raises(ValueError, match="file stem"):
        predictor(Image.open(path))
    coco = by_path.above(0.0).to_coco(image_id=7)
    assert len(coco) == len(by_path) and {r["category_id"] for r in coco} <= {41, 42, 43}
    assert all(r["image_id"] == 7 for r in coco)
    assert np.array_equal(decode_masks([coco[0]["segmentation"]])[0], by_path.masks[0].numpy())
    assert len(by_path.above(1.01)) == 0


def test_predict_says_which_images_have_nothing_above_the_threshold(tiny_cache, tiny_config, tmp_path):
    from click.testing import CliRunner
    from dgseg import cli
    from dgseg.pipeline.config.loading import save_config

    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.device=cpu")
    save_config(cfg, tmp_path / "config.yaml")
    ckpt = _untrained_checkpoint(cfg, tmp_path / "m.pth")
    images = sorted((tiny_cache / "images/val").glob("*.png"))[:2]
    out = tmp_path / "pred"
    args = ["predict", "--config", str(tmp_path / "config.yaml"), "--checkpoint", str(ckpt), "--out", str(out),
            "--score-threshold", "1.01"]  # scores are probabilities: nothing passes
    for path in images:
        args += ["--images", str(path)]
    result = CliRunner().invoke(cli.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [r["instances"] for r in summary["images"]] == [0, 0]
    for record, path in zip(summary["images"], images, strict=True):
        assert "no instance scored >= 1.01" in record["note"] and record["best_score"] < 1.01
        assert f"{path.name}: no instance scored >= 1.01" in result.output
    assert "2 of 2 images have no instance scoring >= 1.01" in result.output
    assert json.loads((out / "results.json").read_text()) == []
