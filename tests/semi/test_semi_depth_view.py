from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.semi.depth_view import _quantile_sorted, render_depth_view


def _depth(B=2, H=12, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 1, H, W, generator=g)


def _valid(B=2, H=12, W=16):
    valid = torch.ones(B, H, W, dtype=torch.bool)
    valid[0, :, 11:] = False  # right padding on image 0
    valid[1, 9:, :] = False  # bottom padding on image 1
    return valid


def test_range_padding_and_determinism():
    depth, valid = _depth(), _valid()
    view = render_depth_view(depth, valid)
    assert view.shape == (2, 3, 12, 16) and view.dtype == torch.float32
    assert view.min() >= 0 and view.max() <= 1
    assert (view.permute(1, 0, 2, 3)[:, ~valid] == 0).all()
    assert torch.equal(view, render_depth_view(depth.clone(), valid.clone()))
    # an image's view does not depend on its batch neighbours
    assert torch.equal(view[1:], render_depth_view(depth[1:], valid[1:]))


def test_invariant_to_positive_scale_and_offset_per_image():
    depth, valid = _depth(), _valid()
    view = render_depth_view(depth, valid)
    scaled = depth.clone()
    scaled[0] = depth[0] * 7.5 + 3.0
    scaled[1] = depth[1] * 0.02 - 1.0
    # 1e-4: float32 rounding of the shifted input itself (range 0.02 around -1)
    torch.testing.assert_close(render_depth_view(scaled, valid), view, rtol=0, atol=1e-4)


def test_padding_values_do_not_change_the_view():
    depth, valid = _depth(), _valid()
    view = render_depth_view(depth, valid)
    noisy = depth.clone()
    noisy[:, 0][~valid] = 50.0
    assert torch.equal(render_depth_view(noisy, valid), view)


def test_percentile_clip_ignores_outliers_and_full_contrast():
    ramp = torch.linspace(0.2, 0.6, 100).reshape(1, 1, 10, 10)
    view = render_depth_view(ramp)
    assert view.min() == 0 and view.max() == 1  # re-normalised to full contrast
    spiked = ramp.clone()
    spiked[0, 0, 5, 5] = 100.0  # one wild pixel (1 %) barely moves the 98th percentile
    out = render_depth_view(spiked)
    keep = torch.ones(10, 10, dtype=torch.bool)
    keep[5, 5] = False
    assert (out[0, 0][keep] - view[0, 0][keep]).abs().max() < 0.05


def test_gray_is_monotone():
    x = torch.linspace(0, 1, 101).reshape(1, 1, 1, 101)
    gray = render_depth_view(x, low_pct=0, high_pct=100)
    assert torch.equal(gray[0, 0], gray[0, 1]) and torch.equal(gray[0, 0], gray[0, 2])
    torch.testing.assert_close(gray[0, 0, 0], x[0, 0, 0])  # near (1) is bright


def test_flat_and_constant_maps():
    flat = torch.full((1, 1, 10, 10), 0.3)
    assert (render_depth_view(flat) == 0).all()
    flat[0, 0, 0, :3] = 0.9  # 3 % near pixels: percentiles coincide, min/max do not
    view = render_depth_view(flat)[0, 0]
    assert (view[0, :3] == 1).all() and (view[1:] == 0).all()
    empty_valid = torch.zeros(1, 10, 10, dtype=torch.bool)
    assert (render_depth_view(flat, empty_valid) == 0).all()


def test_quantile_matches_torch():
    v = torch.rand(1001)
    s = v.sort().values
    for q in (0.0, 0.02, 0.5, 0.98, 1.0):
        assert _quantile_sorted(s, q) == pytest.approx(torch.quantile(v, q).item(), abs=1e-7)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        render_depth_view(torch.rand(2, 12, 16))
    with pytest.raises(ValueError, match="valid"):
        render_depth_view(_depth(), torch.ones(2, 12, 15, dtype=torch.bool))


def test_depth_view_loss_weight_is_a_config_value():
    """`semi.depth_view_weight` scales the labelled depth-view terms (both stages use `supervised_losses`)."""
    from types import SimpleNamespace

    from dgseg.pipeline.config import Config
    from dgseg.pipeline.model.build import build_criterion, build_model
    from dgseg.pipeline.semi.trainer import supervised_losses

    cfg = Config()
    cfg.model.depth_fusion.enabled = False
    cfg.model.hidden_dim = cfg.model.mask_dim = 32
    cfg.model.num_queries, cfg.model.nheads, cfg.model.dec_layers, cfg.model.enc_layers = 4, 2, 2, 1
    cfg.model.dim_feedforward, cfg.model.train_num_points = 64, 64
    model, criterion = build_model(cfg.model, 3, {}), build_criterion(cfg.model, 3)
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 10:40] = True
    batch = SimpleNamespace(images=torch.rand(2, 3, 64, 64), depth=torch.rand(2, 1, 64, 64), features={},
                            valid=torch.ones(2, 64, 64, dtype=torch.bool),
                            targets=[{"labels": torch.tensor([1]), "masks": masks}] * 2)
    terms = {}
    for weight in (1.0, 0.5):
        cfg.semi.depth_view_weight = weight
        ctx = SimpleNamespace(cfg=cfg, criterion=criterion, autocast=torch.autocast("cpu", enabled=False),
                              use_depth=False)
        torch.manual_seed(0)
        terms[weight] = {k: float(v) for k, v in supervised_losses(ctx, model, batch).items()}
    assert terms[1.0].keys() == terms[0.5].keys()
    for k, v in terms[1.0].items():
        expected = 0.5 * v if k.endswith("_depthview") else v
        assert terms[0.5][k] == pytest.approx(expected, rel=1e-5), k
    assert any(k.endswith("_depthview") and v > 0 for k, v in terms[1.0].items())
