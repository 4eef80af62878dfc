"""Depth Fusion: identity at initialisation, gradient into the depth half, any depth-map size."""

from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.config import ModelConfig
from dgseg.pipeline.model.build import build_model
from dgseg.pipeline.model.depth_fusion import DepthFusion

BACKBONE = {"res2": 16, "res3": 24, "res4": 32, "res5": 40}


def _feats(b=2, h=64, w=96):
    return {k: torch.randn(b, c, h // s, w // s) for (k, c), s in zip(BACKBONE.items(), (4, 8, 16, 32), strict=True)}


@pytest.mark.parametrize("depth_size", [(7, 11), (37, 49), (64, 96), (3, 3)])
def test_identity_at_init_for_any_depth_size(depth_size):
    fusion = DepthFusion({"res4": "path_4", "res5": "path_3"}, BACKBONE, {"path_4": 8, "path_3": 5})
    feats = _feats()
    depth = {"path_4": torch.randn(2, 8, *depth_size) * 10, "path_3": torch.randn(2, 5, *depth_size)}
    out = fusion(feats, depth)
    for k in BACKBONE:
        assert out[k].shape == feats[k].shape
        assert torch.equal(out[k], feats[k]), k  # exact, not approximately


def test_depth_half_receives_gradient_and_changes_output_after_a_step():
    fusion = DepthFusion({"res4": "path_4"}, BACKBONE, {"path_4": 8})
    feats = _feats()
    depth = {"path_4": torch.randn(2, 8, 5, 7)}
    target = torch.randn_like(feats["res4"])
    loss = (fusion(feats, depth)["res4"] - target).pow(2).mean()
    loss.backward()
    grad = fusion.fuse["res4"].weight.grad
    assert grad[:, :8].abs().sum() > 0  # depth columns
    with torch.no_grad():
        fusion.fuse["res4"].weight -= 0.1 * grad
    assert not torch.allclose(fusion(feats, depth)["res4"], feats["res4"])


def test_bad_configuration_and_inputs_are_named():
    with pytest.raises(ValueError, match="res7"):
        DepthFusion({"res7": "path_4"}, BACKBONE, {"path_4": 8})
    with pytest.raises(ValueError, match="path_1"):
        DepthFusion({"res4": "path_1"}, BACKBONE, {"path_4": 8})
    fusion = DepthFusion({"res4": "path_4"}, BACKBONE, {"path_4": 8})
    with pytest.raises(KeyError, match="path_4"):
        fusion(_feats(), {"path_3": torch.randn(2, 8, 4, 4)})
    with pytest.raises(ValueError, match="expected"):
        fusion(_feats(), {"path_4": torch.randn(2, 3, 4, 4)})


def _small_cfg(fusion: bool) -> ModelConfig:
    cfg = ModelConfig(hidden_dim=32, mask_dim=32, num_queries=5, nheads=2, dim_feedforward=64, dec_layers=2,
                      enc_layers=1)
    cfg.depth_fusion.enabled = fusion
    return cfg


def test_model_with_fusion_equals_model_without_at_init():
    torch.manual_seed(0)
    plain = build_model(_small_cfg(False), 3, {}).eval()
    fused = build_model(_small_cfg(True), 3, {"path_4": 6}).eval()
    missing, unexpected = fused.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("depth_fusion.") for k in missing)
    images = torch.rand(2, 3, 64, 64)
    depth = {"path_4": torch.randn(2, 6, 8, 8)}
    a, b = plain(images), fused(images, depth)
    assert torch.equal(a["pred_logits"], b["pred_logits"])
    assert torch.equal(a["pred_masks"], b["pred_masks"])
    with pytest.raises(ValueError, match="depth_features"):
        fused(images)


def _perturb_fusion_weights(model) -> None:
    """Give the depth columns of every fusion conv a non-zero weight (as after some training)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for conv in model.depth_fusion.fuse.values():
            conv.weight[:, :1] = torch.randn_like(conv.weight[:, :1])


@pytest.mark.parametrize("inside", [False, True])
def test_inside_backbone_lets_later_stages_compute_on_depth(inside):
    """Fusing only res2: side by side, res5 never sees depth; inside the backbone, res3..res5 are computed
    from the fused res2, so depth changes them. Both equal the RGB model at initialisation."""
    cfg = _small_cfg(True)
    cfg.depth_fusion.sources = {"res2": "depth_s4"}
    cfg.depth_fusion.inside_backbone = inside
    torch.manual_seed(0)
    model = build_model(cfg, 3, {"depth_s4": 1}).eval()
    images = torch.rand(2, 3, 64, 64)
    d1, d2 = {"depth_s4": torch.rand(2, 1, 16, 16)}, {"depth_s4": torch.rand(2, 1, 16, 16)}
    rgb = model.backbone((images - model.pixel_mean) / model.pixel_std)
    fuse = (lambda lvl, f: model.depth_fusion.fuse_level(lvl, f, d1)) if inside else None
    at_init = model.backbone((images - model.pixel_mean) / model.pixel_std, fuse=fuse)
    assert all(torch.equal(rgb[k], at_init[k]) for k in rgb)
    _perturb_fusion_weights(model)
    x = (images - model.pixel_mean) / model.pixel_std
    if inside:
        r1 = model.backbone(x, fuse=lambda lvl, f: model.depth_fusion.fuse_level(lvl, f, d1))
        r2 = model.backbone(x, fuse=lambda lvl, f: model.depth_fusion.fuse_level(lvl, f, d2))
    else:
        r1, r2 = model.depth_fusion(model.backbone(x), d1), model.depth_fusion(model.backbone(x), d2)
    assert not torch.allclose(r1["res2"], r2["res2"])
    assert torch.allclose(r1["res5"], r2["res5"]) != inside
    # and the model's forward takes the configured path
    out1, out2 = model(images, d1), model(images, d2)
    assert not torch.allclose(out1["pred_logits"], out2["pred_logits"])


def test_open_init_uses_depth_from_step_zero_and_identity_does_not():
    feats = _feats()
    depth = {"path_4": torch.randn(2, 8, 5, 7)}
    torch.manual_seed(0)
    open_ = DepthFusion({"res4": "path_4"}, BACKBONE, {"path_4": 8}, init="open")
    shift = open_(feats, depth)["res4"] - feats["res4"]
    # each output channel gets a unit-variance share of unit-variance depth features
    assert 0.5 < shift.std().item() < 2.0
    assert torch.equal(open_.fuse["res4"].weight[:, 8:, 0, 0], torch.eye(32))  # backbone half still the identity
    ident = DepthFusion({"res4": "path_4"}, BACKBONE, {"path_4": 8}, init="identity")
    assert torch.equal(ident(feats, depth)["res4"], feats["res4"])
    with pytest.raises(ValueError, match="init"):
        DepthFusion({"res4": "path_4"}, BACKBONE, {"path_4": 8}, init="zeros")


def test_res1_is_not_a_fusion_level():
    """The stride-2 stem source was removed (docs/experiments/2026-12-04-removed-options.md): refused by name."""
    cfg = _small_cfg(True)
    cfg.depth_fusion.sources = {"res1": "depth_s2"}
    cfg.depth_fusion.inside_backbone = True
    with pytest.raises(ValueError, match="res1"):
        build_model(cfg, 3, {"depth_s2": 1})
