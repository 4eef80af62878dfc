"""The auxiliary per-pixel class loss (model.semantic_weight): targets, values, weights, and the head."""

from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.model.build import build_criterion, build_model
from dgseg.pipeline.model.criterion import point_classes

from tests.model.test_model_overfit import make_scenes, small_config, train_and_score


def _two_instances():
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:10, 2:10] = True
    masks[1, 6:14, 6:14] = True  # overlaps the first in [6, 10) x [6, 10)
    return {"labels": torch.tensor([2, 0]), "masks": masks}


def test_point_classes_paint_instances_over_background():
    t = _two_instances()
    ys = torch.tensor([0, 3, 8, 12, 15])
    xs = torch.tensor([0, 3, 8, 12, 1])
    # background = 3 (K); the later instance wins where they overlap
    assert point_classes(t, ys, xs, num_classes=3).tolist() == [3, 2, 0, 0, 3]
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16, dtype=torch.bool)}
    assert point_classes(empty, ys, xs, num_classes=3).tolist() == [3] * 5


def _criterion(weight: float = 1.0):
    cfg = small_config()
    cfg.semantic_weight = weight
    cfg.train_num_points = 2048
    cfg.mask_stride = 4
    return build_criterion(cfg, 3)


def _logits_of(targets, stride: int = 4, scale: float = 30.0):
    """Per-pixel logits that say the true class of each cell centre (one-hot x scale)."""
    out = []
    for t in targets:
        h, w = t["masks"].shape[-2:]
        ys = torch.arange(h // stride) * stride + stride // 2
        xs = torch.arange(w // stride) * stride + stride // 2
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        cls = point_classes(t, yy.flatten(), xx.flatten(), 3).view(h // stride, w // stride)
        out.append(torch.nn.functional.one_hot(cls, 4).permute(2, 0, 1).float() * scale)
    return torch.stack(out)


def test_loss_is_low_for_the_true_map_high_for_another_and_weighted_per_image():
    crit = _criterion()
    big = torch.zeros(2, 32, 32, dtype=torch.bool)
    big[0, 0:16, 0:16] = True
    big[1, 16:32, 8:32] = True
    targets = [{"labels": torch.tensor([1, 2]), "masks": big},
               {"labels": torch.tensor([0]), "masks": big[1:]}]
    logits = _logits_of(targets)
    torch.manual_seed(0)
    right = crit.loss_semantic(logits, targets, torch.ones(2))
    wrong = crit.loss_semantic(logits.flip(0), targets, torch.ones(2))
    assert right < 0.05 and wrong > 5.0
    # image weights: the second image alone, then neither
    only_second = crit.loss_semantic(torch.stack([logits[1], logits[0]]), targets, torch.tensor([0.0, 1.0]))
    assert only_second > 2.0
    assert crit.loss_semantic(logits.flip(0), targets, torch.zeros(2)) == 0


def test_padding_beyond_the_targets_is_never_sampled():
    """Logits cover 48 px, the image 32: the cells past the image (beyond the bilinear reach of its last
    cell) say anything, the loss does not move."""
    crit = _criterion()
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, 4:20, 4:20] = True
    targets = [{"labels": torch.tensor([1]), "masks": masks}]
    logits = torch.zeros(1, 4, 12, 12)
    logits[:, :, :8, :8] = _logits_of(targets)
    logits[:, :, 8, :9] = logits[:, :, 7, :9]  # the 32nd pixel reads half of the next cell: continue the map
    logits[:, :, :9, 8] = logits[:, :, :9, 7]
    noisy = logits.clone()
    noisy[:, :, 9:, :] = torch.randn(1, 4, 3, 12) * 50
    noisy[:, :, :, 9:] = torch.randn(1, 4, 12, 3) * 50
    torch.manual_seed(0)
    a = crit.loss_semantic(logits, targets, torch.ones(1))
    torch.manual_seed(0)
    b = crit.loss_semantic(noisy, targets, torch.ones(1))
    assert torch.allclose(a, b) and a < 0.1


def test_head_exists_only_when_weighted_and_only_trains():
    images, targets, _ = make_scenes(2, 64)
    cfg = small_config()
    plain = build_model(cfg, 3, {})
    assert plain.semantic_head is None and "pred_semantic" not in plain.train()(images)
    assert "loss_sem" not in build_criterion(cfg, 3)(plain(images), targets)
    cfg.semantic_weight = 0.5
    model = build_model(cfg, 3, {}).train()
    out = model(images[..., :60, :60])  # padded to 64 inside: the logits are cropped like the masks
    assert out["pred_semantic"].shape == (2, 4, 15, 15) == (2, 4, *out["pred_masks"].shape[-2:])
    losses = build_criterion(cfg, 3)(model(images), targets)
    assert losses["loss_sem"] > 0
    sum(losses.values()).backward()
    assert model.semantic_head.weight.grad.abs().sum() > 0
    assert "pred_semantic" not in model.eval()(images)  # inference does not compute it
    with pytest.raises(ValueError, match="num_classes"):
        build_criterion(cfg, 5).loss_semantic(out["pred_semantic"], targets, torch.ones(2))


def test_overfits_eight_small_scenes_with_the_semantic_loss():
    images, targets, _ = make_scenes(8, 64)
    cfg = small_config()
    cfg.semantic_weight = 1.0
    assert train_and_score(images, targets, steps=40, cfg=cfg) >= 0.8
