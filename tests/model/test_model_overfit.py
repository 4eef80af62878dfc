"""The segmenter learns: it overfits a few generated scenes to high COCO mask AP (pycocotools).

Scenes are drawn here (plain coloured shapes, one shape and colour per class) so the test does
not depend on the dataset generator. Training follows the real recipe: point-sampled losses
against full-resolution targets, postprocessing with bilinear upsampling before thresholding.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from dgseg.pipeline.config import ModelConfig
from dgseg.pipeline.model.build import build_criterion, build_model
from dgseg.pipeline.model.postprocess import postprocess
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

COLOURS = np.array([[220, 50, 50], [50, 200, 60], [60, 80, 230]], np.float32) / 255


def _shape(kind: int, yy, xx, cy, cx, r):
    if kind == 0:  # rectangle
        return (abs(yy - cy) < r * 0.8) & (abs(xx - cx) < r)
    if kind == 1:  # ellipse
        return ((yy - cy) / r) ** 2 + ((xx - cx) / (0.7 * r)) ** 2 < 1
    return (yy - cy < r) & (yy - cy > -r + 2 * abs(xx - cx))  # triangle


def make_scenes(n: int, size: int, seed: int = 0):
    """n scenes of 1-3 non-overlapping shapes: (images (n,3,S,S) in [0,1], targets, depth (n,1,S,S))."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images, targets, depths = [], [], []
    for _ in range(n):
        img = 0.5 + rng.normal(0, 0.03, (size, size, 3)).astype(np.float32)
        depth = np.zeros((size, size), np.float32)  # 0 = far background, like inverse depth
        occupied = np.zeros((size, size), bool)
        masks, labels = [], []
        for _obj in range(rng.integers(1, 4)):
            for _try in range(20):
                kind = int(rng.integers(0, 3))
                r = rng.uniform(0.14, 0.22) * size
                cy, cx = rng.uniform(r, size - r, 2)
                m = _shape(kind, yy, xx, cy, cx, r)
                if not (m & occupied).any():
                    break
            else:
                continue
            occupied |= m
            img[m] = COLOURS[kind]
            depth[m] = 0.3 + 0.25 * len(masks)  # each instance its own plane
            masks.append(m)
            labels.append(kind)
        images.append(torch.from_numpy(img.clip(0, 1)).permute(2, 0, 1))
        depths.append(torch.from_numpy(depth)[None])
        targets.append({"labels": torch.tensor(labels, dtype=torch.int64), "masks": torch.from_numpy(np.stack(masks))})
    return torch.stack(images), targets, torch.stack(depths)


def _rle(m: torch.Tensor) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_ap(predictions: list[dict], targets: list[dict], num_classes: int = 3) -> float:
    """COCO mask AP (IoU 0.50:0.95) of predictions against the targets, by pycocotools."""
    images, anns, results = [], [], []
    for i, (p, t) in enumerate(zip(predictions, targets, strict=True)):
        h, w = t["masks"].shape[-2:]
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for m, lab in zip(t["masks"], t["labels"], strict=True):
            rle = _rle(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab) + 1, "segmentation": rle,
                         "area": float(m.sum()), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
        for m, s, lab in zip(p["masks"], p["scores"], p["labels"], strict=True):
            results.append({"image_id": i + 1, "category_id": int(lab) + 1, "segmentation": _rle(m), "score": float(s)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def small_config(fusion: bool = False) -> ModelConfig:
    cfg = ModelConfig(backbone="resnet18", hidden_dim=64, mask_dim=64, num_queries=20, nheads=4, dim_feedforward=256,
                      dec_layers=3, enc_layers=1, train_num_points=1024)
    cfg.depth_fusion.enabled = fusion
    return cfg


def train_and_score(images, targets, steps: int, cfg: ModelConfig, depth=None, lr: float = 1e-3,
                    padding=None, num_classes: int = 3) -> float:
    """Full-batch AdamW on the scenes, then mask AP on the same scenes in eval mode.

    padding: (B, H, W) bool, True where a scene is padded (its image is the top-left block)."""
    torch.manual_seed(0)
    depth_channels = {k: v.shape[1] for k, v in depth.items()} if depth else {}
    model = build_model(cfg, num_classes, depth_channels)
    criterion = build_criterion(cfg, num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        losses = criterion(model(images, depth, padding), targets)
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        outputs = model(images, depth, padding)
    if padding is None:
        sizes = [tuple(images.shape[-2:])] * len(images)
    else:
        sizes = [(int((~p).any(1).sum()), int((~p).any(0).sum())) for p in padding]
    preds = postprocess(outputs, sizes, sizes, max_det=20, mask_stride=model.mask_stride)
    return mask_ap(preds, [{"labels": t["labels"], "masks": t["masks"][:, :h, :w]}
                           for t, (h, w) in zip(targets, sizes, strict=True)], num_classes)


def test_ground_truth_scores_ap_one():
    """The AP helper itself: ground truth as predictions gives 1.0."""
    _, targets, _ = make_scenes(4, 64)
    preds = [{"masks": t["masks"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets]
    assert mask_ap(preds, targets) == pytest.approx(1.0)


def test_overfits_eight_small_scenes():
    images, targets, _ = make_scenes(8, 64)
    assert train_and_score(images, targets, steps=40, cfg=small_config()) >= 0.8


@pytest.mark.slow
def test_overfits_sixteen_scenes():
    images, targets, _ = make_scenes(16, 96, seed=1)
    assert train_and_score(images, targets, steps=100, cfg=small_config()) >= 0.8


@pytest.mark.slow
def test_depth_fusion_learns_instances_only_depth_shows():
    """RGB is constant; only the depth map separates the instances. Fusion on must beat fusion off.

    The depth map is scaled to the magnitude of decoder features (x10): the fusion's depth weights start
    at zero and grow at the optimiser's pace, so a [0, 1] map would need many more steps. It is fused at
    every level; fused at res4/res5 only, 60 steps reach AP ~0.1 here (the stride-4 mask features then
    see depth only through the coarse levels).
    """
    _, targets, depth = make_scenes(8, 64, seed=2)
    images = torch.full((8, 3, 64, 64), 0.5)
    cfg_on = small_config(fusion=True)
    cfg_on.depth_fusion.sources = {lvl: "depth" for lvl in ("res2", "res3", "res4", "res5")}
    ap_on = train_and_score(images, targets, steps=60, cfg=cfg_on, depth={"depth": depth * 10})
    ap_off = train_and_score(images, targets, steps=60, cfg=small_config(fusion=False))
    assert ap_off < 0.1
    assert ap_on > ap_off + 0.3


@pytest.mark.slow
def test_overfits_scenes_of_mixed_sizes_padded_into_one_batch():
    """Scenes cropped to four sizes (portrait, landscape, square) and zero-padded back to one batch,
    trained and scored with the padding mask, as the engine's batches are."""
    images, targets, _ = make_scenes(8, 64, seed=3)
    padding = torch.zeros(8, 64, 64, dtype=torch.bool)
    kept = []
    for i, (h, w) in enumerate([(64, 64), (64, 44), (44, 64), (52, 52)] * 2):
        padding[i, h:] = True
        padding[i, :, w:] = True
        images[i, :, h:] = 0
        images[i, :, :, w:] = 0
        masks = targets[i]["masks"] & ~padding[i]
        keep = masks.flatten(1).sum(1) >= 20  # instances cropped away (or nearly) are dropped
        kept.append({"labels": targets[i]["labels"][keep], "masks": masks[keep]})
    # measured 0.77 here (deterministic on one machine): edge-cropped partial shapes are harder than
    # the whole scenes of test_overfits_eight_small_scenes; an untrained model scores ~0
    assert train_and_score(images, kept, steps=60, cfg=small_config(), padding=padding) >= 0.7


def _small_preset_scenes(n: int, size: int, seed: int):
    """Scenes of the generator's small-object preset (objects on a ground plane, distractors, 4 classes):
    images, targets (labels 0..3) and the normalised depth (1 = nearest) pooled to stride 4, as the
    `files` source caches it (depth_s4)."""
    from dgseg.pipeline.data.synthetic import PRESETS, render_scene

    rng = np.random.default_rng(seed)
    images, targets, depths = [], [], []
    for _ in range(n):
        rgb, depth_mm, masks, labels = render_scene(rng, size, spec=PRESETS["small"])
        d = depth_mm.astype(np.float32)
        d = (d.max() - d) / max(d.max() - d.min(), 1.0)
        images.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
        depths.append(torch.nn.functional.avg_pool2d(torch.from_numpy(d)[None, None], 4)[0])
        targets.append({"labels": torch.from_numpy(labels - 1), "masks": torch.from_numpy(masks)})
    return torch.stack(images), targets, torch.stack(depths)


@pytest.mark.slow
def test_from_scratch_depth_fusion_learns_small_objects_on_a_ground_plane():
    """The small-object preset (many objects 8-17 px across, colour-ambiguous, on a ground plane, painted
    distractors): the from-scratch recipe of the demo configs (depth fused inside the backbone from random
    'open' fusion weights, depth at stride 4 for res2) fits the scenes. (The earlier recipe, zero depth
    weights fused beside the backbone, fits these 12 scenes too (AP 0.82 vs 0.75 measured): memorising a
    few scenes does not tell the recipes apart; held-out AP after 200 steps on 2,000 scenes does, 0.12
    vs 0.74, see docs/experiments/2026-11-26-recipe-from-scratch.md.)"""
    images, targets, depth = _small_preset_scenes(12, 96, seed=3)
    cfg = small_config(fusion=True)
    cfg.depth_fusion.sources = {"res2": "depth", "res3": "depth", "res4": "depth", "res5": "depth"}
    cfg.depth_fusion.inside_backbone = True
    cfg.depth_fusion.init = "open"
    assert train_and_score(images, targets, steps=80, cfg=cfg, depth={"depth": depth}, num_classes=4) >= 0.5
