"""The Mask R-CNN anchor's builder: input channels, normalisation, slim heads, trainable BatchNorm."""

from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.baselines.maskrcnn import build_maskrcnn, input_channels
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


def _target(size: int) -> dict:
    masks = torch.zeros(1, size, size, dtype=torch.uint8)
    masks[0, 8:30, 10:40] = 1
    return {"boxes": torch.tensor([[10.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([2]), "masks": masks}


def test_rgbd_model_takes_four_channels_and_has_slim_heads():
    model = build_maskrcnn(num_classes=3, mode="rgbd", image_size=64)
    conv1 = model.backbone.body.conv1
    assert conv1.in_channels == 4 and conv1.out_channels == 64
    assert len(model.transform.image_mean) == 4 and len(model.transform.image_std) == 4
    assert model.transform.min_size == (64,) and model.transform.max_size == 64
    heads = model.roi_heads
    assert heads.box_head.fc7.out_features == 256
    assert heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    assert heads.box_predictor.bbox_pred.out_features == 16
    convs = [m for m in heads.mask_head.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64]
    assert heads.mask_predictor.mask_fcn_logits.out_channels == 4
    assert heads.fg_bg_sampler.batch_size_per_image == 32
    # random init trains every layer with ordinary batch statistics, not torchvision's frozen identity
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20
    assert all(p.requires_grad for p in model.parameters())

    model.train()
    losses = model([torch.rand(4, 64, 64), torch.rand(4, 64, 64)], [_target(64), _target(64)])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert conv1.weight.grad is not None and conv1.weight.grad[:, 3].abs().sum() > 0  # the depth channel learns
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(4, 64, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores", "masks"}


@pytest.mark.parametrize("mode, channels", [("rgb", 3), ("depth", 3), ("rgbd", 4)])
def test_input_channels_per_mode(mode, channels):
    model = build_maskrcnn(num_classes=2, mode=mode, image_size=32)
    assert input_channels(mode) == channels
    assert model.backbone.body.conv1.in_channels == channels
    assert len(model.transform.image_mean) == channels


def test_frozen_norm_is_torchvisions_default_and_bad_arguments_are_named():
    frozen = build_maskrcnn(num_classes=2, mode="rgb", image_size=32, norm="frozen")
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    with pytest.raises(ValueError, match="'rgbx'"):
        build_maskrcnn(num_classes=2, mode="rgbx", image_size=32)
    with pytest.raises(ValueError, match="'gn'"):
        build_maskrcnn(num_classes=2, mode="rgb", image_size=32, norm="gn")
