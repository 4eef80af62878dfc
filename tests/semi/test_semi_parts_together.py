"""The semi-supervised pieces chained as the trainer will chain them, against the real SetCriterion."""

from __future__ import annotations

import math

import pytest
import torch
from dgseg.pipeline.config import ControllerConfig, ModelConfig
from dgseg.pipeline.model.build import build_criterion
from dgseg.pipeline.semi.agreement import pseudo_label_agreement
from dgseg.pipeline.semi.depth_controller import build_controller
from dgseg.pipeline.semi.losses import combine_unsup_losses, loss_value
from dgseg.pipeline.semi.pseudo_labels import make_pseudo_labels

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


def _measure_and_update(controller, criterion, rgb, depth, student, step, class_aware=True):
    from dgseg.pipeline.semi.depth_controller import finish_measurements, measure_step

    raw = measure_step(rgb, depth, criterion(student, rgb), criterion(student, depth), class_aware=class_aware)
    return controller.update(step, finish_measurements(raw))


def test_an_empty_depth_set_does_not_raise_the_weight():
    """100 steps where the depth-view teacher finds nothing (and the RGB one finds objects): w stays
    at w_init. Before: agreement 0 and a tiny classification-only depth loss pushed w to ~0.9."""
    criterion = build_criterion(ModelConfig(train_num_points=64, deep_supervision=False), num_classes=K)
    valid = torch.ones(B, H, W, dtype=torch.bool)
    rgb = make_pseudo_labels(_teacher_outputs(True, 0), (H, W), valid)
    empty = make_pseudo_labels(_teacher_outputs(False, 1), (H, W), valid)
    assert sum(len(t["labels"]) for t in rgb) == 2 and sum(len(t["labels"]) for t in empty) == 0
    controller = build_controller(ControllerConfig(init_weight=0.5))
    weights = []
    for step in range(100):
        torch.manual_seed(step)
        weights.append(_measure_and_update(controller, criterion, rgb, empty, _student_outputs(), step))
    assert max(weights) <= 0.5 + 1e-9


def test_a_lopsided_batch_measures_only_the_images_with_two_sets():
    """Image 0: both views agree; image 1: only RGB found something. The agreement is image 0's (1.0),
    and w falls below w_init instead of rising."""
    criterion = build_criterion(ModelConfig(train_num_points=64, deep_supervision=False), num_classes=K)
    valid = torch.ones(B, H, W, dtype=torch.bool)
    out = _teacher_outputs(True, 0)
    out["pred_logits"][1, 2, 2] = 8.0  # image 1: a third query of class 2, RGB view only
    out["pred_masks"][1, 2, 2:6, 2:6] = 6.0
    rgb = make_pseudo_labels(out, (H, W), valid)
    depth = make_pseudo_labels(_teacher_outputs(True, 0), (H, W), valid)
    assert [len(t["labels"]) for t in rgb] == [2, 1] and [len(t["labels"]) for t in depth] == [2, 0]
    from dgseg.pipeline.semi.depth_controller import finish_measurements, measure_step

    student = _student_outputs()
    stats = finish_measurements(measure_step(rgb, depth, criterion(student, rgb), criterion(student, depth)))
    assert stats["agreement"] == 1.0
    assert stats["loss_depth"] > 0 and stats["loss_rgb"] > 0  # matched mask losses, both measured
    controller = build_controller(ControllerConfig(init_weight=0.5, loss_gain=0.0))
    assert controller.update(0, stats) < 0.5


def test_class_agnostic_agreement_matches_instances_whatever_their_class():
    criterion = build_criterion(ModelConfig(train_num_points=64, deep_supervision=False), num_classes=K)
    valid = torch.ones(B, H, W, dtype=torch.bool)
    rgb = make_pseudo_labels(_teacher_outputs(True, 0), (H, W), valid)
    other = _teacher_outputs(True, 0)
    other["pred_logits"][0, :2, 2] = 9.0  # same masks, class 2 instead of 1
    depth = make_pseudo_labels(other, (H, W), valid)
    from dgseg.pipeline.semi.depth_controller import finish_measurements, measure_step

    student = _student_outputs()
    lr, ld = criterion(student, rgb), criterion(student, depth)
    assert finish_measurements(measure_step(rgb, depth, lr, ld))["agreement"] == 0.0
    assert finish_measurements(measure_step(rgb, depth, lr, ld, class_aware=False))["agreement"] == 1.0
