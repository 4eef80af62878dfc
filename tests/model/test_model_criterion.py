"""Set criterion: empty target sets, per-image weights, full-resolution targets, deep supervision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dgseg.pipeline.model.criterion import SetCriterion
from dgseg.pipeline.model.matcher import HungarianMatcher

WEIGHTS = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def _criterion(num_points=256, **kw):
    return SetCriterion(3, HungarianMatcher(2.0, 5.0, 5.0, num_points=num_points), WEIGHTS, eos_coef=0.1,
                        num_points=num_points, **kw)


def _outputs(b=2, q=5, h=8, w=8, aux=2, requires_grad=True):
    def one():
        return {"pred_logits": torch.randn(b, q, 4, requires_grad=requires_grad),
                "pred_masks": torch.randn(b, q, h, w, requires_grad=requires_grad)}
    out = one()
    out["aux_outputs"] = [one() for _ in range(aux)]
    return out


def _target(n, size=32, weight=None):
    t = {"labels": torch.randint(0, 3, (n,)), "masks": torch.rand(n, size, size) > 0.5}
    if weight is not None:
        t["weight"] = weight
    return t


def test_zero_targets_give_finite_losses_and_gradients():
    out = _outputs()
    losses = _criterion()(out, [_target(0), _target(0)])
    assert set(losses) == {f"{k}{s}" for k in WEIGHTS for s in ("", "_0", "_1")}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0 and losses["loss_ce"] > 0
    sum(losses.values()).backward()
    assert torch.isfinite(out["pred_logits"].grad).all() and out["pred_logits"].grad.abs().sum() > 0
    assert out["pred_masks"].grad is not None and torch.isfinite(out["pred_masks"].grad).all()
    mixed = _criterion()(_outputs(), [_target(0), _target(2)])
    assert all(torch.isfinite(v) for v in mixed.values()) and mixed["loss_dice"] > 0


def test_class_loss_equals_weighted_cross_entropy():
    out = _outputs(aux=0)
    targets = [_target(2), _target(3)]
    crit = _criterion()
    indices = crit.matcher(out, targets)
    got = crit.loss_labels(out, targets, indices, torch.ones(2))
    tc = torch.full((2, 5), 3)
    for i, (src, tgt) in enumerate(indices):
        tc[i, src] = targets[i]["labels"][tgt]
    want = F.cross_entropy(out["pred_logits"].transpose(1, 2), tc, weight=crit.empty_weight)
    torch.testing.assert_close(got, want)


def test_per_image_weights_scale_the_losses():
    out = _outputs()
    base = [_target(2), _target(1)]
    torch.manual_seed(3)
    plain = _criterion()(out, base)
    torch.manual_seed(3)
    halved = _criterion()(out, [dict(t, weight=0.5) for t in base])
    for k in plain:
        torch.testing.assert_close(halved[k], 0.5 * plain[k])
    # a zero weight on the only image with targets removes its mask terms
    torch.manual_seed(3)
    muted = _criterion()(out, [_target(0), _target(2, weight=0.0)])
    assert muted["loss_mask"] == 0 and muted["loss_dice"] == 0


def test_mask_targets_are_read_at_full_resolution():
    """A boundary between logit cells is rewarded: only a full-resolution target can tell."""
    size, edge = 32, 10  # the target's edge at x = 10 px lies inside the 4-px cell [8, 12)
    target = {"labels": torch.tensor([0]), "masks": torch.zeros(1, size, size, dtype=torch.bool)}
    target["masks"][0, :, :edge] = True
    centres = torch.arange(size // 4) * 4 + 1.5  # pixel centres of the logit cells
    crit = _criterion(num_points=20000, oversample_ratio=1.0, importance_sample_ratio=0.0)

    def mask_loss(boundary):
        logits = (boundary - centres).view(1, 1, 1, -1).expand(1, 1, size // 4, -1) * 4.0
        out = {"pred_logits": torch.tensor([[[9.0, 0, 0, 0]]]), "pred_masks": logits.contiguous()}
        torch.manual_seed(0)
        return crit(out, [target])["loss_mask"].item()

    assert mask_loss(9.5) < mask_loss(7.5)
    assert mask_loss(9.5) < mask_loss(11.5)


def test_targets_of_unpadded_size_and_deep_supervision_switch():
    out = _outputs(h=8, w=8)
    losses = _criterion(deep_supervision=False)(out, [_target(1, size=30), _target(2, size=29)])
    assert set(losses) == set(WEIGHTS)
    with pytest.raises(ValueError, match="exceed"):
        _criterion()(out, [_target(1, size=40), _target(1)])
