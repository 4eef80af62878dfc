"""The model glue: output shapes for any input size, no loss inside, clear errors."""

from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.config import ModelConfig
from dgseg.pipeline.model.build import build_criterion, build_model


def _cfg(**kw) -> ModelConfig:
    cfg = ModelConfig(hidden_dim=32, mask_dim=16, num_queries=6, nheads=2, dim_feedforward=64, dec_layers=3,
                      enc_layers=1, train_num_points=128, **kw)
    cfg.depth_fusion.sources = {"res3": "path_3", "res5": "path_4"}
    return cfg


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_outputs_for_padded_and_unpadded_inputs(size):
    model = build_model(_cfg(), 4, {"path_3": 8, "path_4": 5})
    mask_stride = model.mask_stride
    assert mask_stride == 4
    h, w = size
    depth = {"path_3": torch.randn(2, 8, h // 8, w // 8), "path_4": torch.randn(2, 5, 3, 4)}
    out = model(torch.rand(2, 3, h, w), depth)
    assert out["pred_logits"].shape == (2, 6, 5)
    mh, mw = -(-h // mask_stride), -(-w // mask_stride)
    assert out["pred_masks"].shape == (2, 6, mh, mw)
    assert len(out["aux_outputs"]) == 3  # before each decoder layer
    for aux in out["aux_outputs"]:
        assert aux["pred_masks"].shape == (2, 6, mh, mw) and aux["pred_logits"].shape == (2, 6, 5)
    targets = [{"labels": torch.tensor([1]), "masks": torch.rand(1, h, w) > 0.5},
               {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, h, w, dtype=torch.bool)}]
    losses = build_criterion(_cfg(), 4)(out, targets)
    sum(losses.values()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("backbone."))


def test_depth_fusion_configuration_errors():
    with pytest.raises(ValueError, match="depth_fusion"):
        build_model(_cfg(), 3, {})
    with pytest.raises(ValueError, match="path_3"):
        build_model(_cfg(), 3, {"path_4": 5})
    model = build_model(_cfg(), 3, {"path_3": 8, "path_4": 5})
    with pytest.raises(ValueError, match="Depth Fusion"):
        model(torch.rand(1, 3, 64, 64))


def test_unknown_backbone_in_config():
    cfg = _cfg(backbone="resnt50")
    cfg.depth_fusion.enabled = False
    with pytest.raises(ValueError, match="resnet50"):
        build_model(cfg, 3, {})


def test_padding_mask_shape_is_checked_and_a_copy_masks_its_own_backbone():
    import copy

    cfg = _cfg()
    cfg.depth_fusion.enabled = False
    model = build_model(cfg, 3, {}).eval()
    with pytest.raises(ValueError, match="mask must be"):
        model(torch.rand(1, 3, 64, 64), None, torch.zeros(1, 32, 32, dtype=torch.bool))
    teacher = copy.deepcopy(model)  # the EMA teacher is a deep copy
    images = torch.rand(2, 3, 64, 96)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[0, 40:] = True
    mask[0, :, 60:] = True
    with torch.no_grad():
        a, b = model(images, None, mask), teacher(images, None, mask)
        alone = teacher(images[:1, :, :40, :60])
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"])
    torch.testing.assert_close(b["pred_logits"][:1], alone["pred_logits"], atol=1e-5, rtol=0)


def test_ground_truth_never_enters_the_forward():
    """Mask-piloted queries were removed (docs/experiments/2026-12-04-removed-options.md): the model's
    forward takes images, depth and padding only, and the decoder's forward no ground truth either."""
    import inspect

    from dgseg.pipeline.model.mask_former import MaskFormer
    from dgseg.pipeline.model.transformer_decoder import MaskedTransformerDecoder

    assert list(inspect.signature(MaskFormer.forward).parameters) == ["self", "images", "depth_features", "mask"]
    assert list(inspect.signature(MaskedTransformerDecoder.forward).parameters) == [
        "self", "features", "mask_features", "mask"]
