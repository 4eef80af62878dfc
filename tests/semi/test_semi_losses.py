from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.semi.losses import combine_unsup_losses, loss_value


def _losses(scale: float, requires_grad: bool = False):
    return {
        "loss_ce": torch.tensor(1.0 * scale, requires_grad=requires_grad),
        "loss_mask": torch.tensor(2.0 * scale, requires_grad=requires_grad),
    }


def test_weighted_combination_and_names():
    rgb, depth = _losses(1.0), _losses(10.0)
    out = combine_unsup_losses(rgb, depth, weight=0.25, unsup_weight=2.0)
    assert set(out) == {"loss_ce_unsup_rgb", "loss_mask_unsup_rgb", "loss_ce_unsup_depth", "loss_mask_unsup_depth"}
    assert out["loss_ce_unsup_rgb"].item() == pytest.approx(2.0 * 0.75 * 1.0)
    assert out["loss_mask_unsup_depth"].item() == pytest.approx(2.0 * 0.25 * 20.0)
    total = sum(out.values())
    assert total.item() == pytest.approx(2.0 * (0.75 * 3.0 + 0.25 * 30.0))


def test_gradients_carry_the_weights():
    rgb, depth = _losses(1.0, True), _losses(1.0, True)
    sum(combine_unsup_losses(rgb, depth, weight=0.3, unsup_weight=2.0).values()).backward()
    assert rgb["loss_ce"].grad.item() == pytest.approx(2.0 * 0.7)
    assert depth["loss_mask"].grad.item() == pytest.approx(2.0 * 0.3)


def test_rgb_only_ignores_the_controller_weight():
    out = combine_unsup_losses(_losses(1.0), None, weight=0.9, unsup_weight=2.0)
    assert set(out) == {"loss_ce_unsup_rgb", "loss_mask_unsup_rgb"}
    assert out["loss_mask_unsup_rgb"].item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="weight"):
        combine_unsup_losses(_losses(1.0), None, weight=1.2, unsup_weight=2.0)


def test_loss_value_is_a_detached_float():
    assert loss_value(_losses(1.0, True)) == pytest.approx(3.0)
    assert loss_value({}) is None
