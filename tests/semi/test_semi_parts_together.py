"""The semi-supervised pieces chained as the trainer will chain them, against the real SetCriterion."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import ControllerConfig, ModelConfig
from pipeline.model.build import build_criterion
from pipeline.semi.agreement import pseudo_label_agreement
from pipeline.semi.depth_controller import build_controller
from pipeline.semi.losses import combine_unsup_losses, loss_value
from pipeline.semi.pseudo_labels import make_pseudo_labels

B, Q, K, H, W = 2, 6, 3, 32, 32


def _teacher_outputs(confident: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, Q, K + 1, generator=g)
    logits[..., K] = 3.0  # no-object everywhere ...
    if confident:
        logits[0, :2, 1] = 8.0  # ... except two confident queries of class 1 in image 0
    masks = torch.full((B, Q, H // 4, W // 4), -6.0)
    masks[0, 0, :4, :4] = 6.0
    masks[0, 1, 4:, 4:] = 6.0
    return {"pred_logits": logits, "pred_masks": masks}


def _student_outputs():
    logits = torch.randn(B, Q, K + 1, requires_grad=True)
    masks = torch.randn(B, Q, H // 4, W // 4, requires_grad=True)
    return {"pred_logits": logits, "pred_masks": masks}


@pytest.mark.parametrize("confident", [True, False])
def test_pseudo_labels_feed_the_criterion_and_the_controller(confident):
    criterion = build_criterion(ModelConfig(train_num_points=64, deep_supervision=False), num_classes=K)
    valid = torch.ones(B, H, W, dtype=torch.bool)
    rgb = make_pseudo_labels(_teacher_outputs(confident, 0), (H, W), valid)
    depth = make_pseudo_labels(_teacher_outputs(confident, 1), (H, W), valid)
    assert [len(t["labels"]) for t in rgb] == ([2, 0] if confident else [0, 0])

    student = _student_outputs()
    loss_rgb, loss_depth = criterion(student, rgb), criterion(student, depth)
    controller = build_controller(ControllerConfig())
    agreement = pseudo_label_agreement(rgb, depth)
    assert agreement == (1.0 if confident else None)  # the same masks and classes from both views
    w = controller.update(0, {"agreement": agreement, "loss_rgb": loss_value(loss_rgb),
                              "loss_depth": loss_value(loss_depth)})
    assert 0.0 <= w <= 1.0
    unsup = combine_unsup_losses(loss_rgb, loss_depth, w, unsup_weight=2.0)
    total = sum(unsup.values())
    assert math.isfinite(total.item())  # also when every pseudo-label set is empty
    total.backward()
    assert torch.isfinite(student["pred_logits"].grad).all() and torch.isfinite(student["pred_masks"].grad).all()
