"""Plain-PyTorch multi-scale deformable attention against a naive per-point implementation."""

from __future__ import annotations

import torch
from dgseg.pipeline.model.ms_deform_attn import MSDeformAttn, ms_deform_attn_core
from dgseg.pipeline.model.pixel_decoder import MSDeformAttnPixelDecoder


def _bilinear_zero_pad(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img (D, H, W) at normalised (x, y) with align_corners=False semantics and zero outside."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - abs(px - xi)) * (1 - abs(py - yi))
            if 0 <= xi < w and 0 <= yi < h:
                out += wgt * img[:, yi, xi]
    return out


def _naive(value, shapes, locations, weights):
    b, _, m, d = value.shape
    _, lq, _, n_lvl, n_pts, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, lq, m, d, dtype=value.dtype)
    for bi in range(b):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    img = value[bi, starts[lvl]:starts[lvl + 1], head].T.reshape(d, h, w)
                    for p in range(n_pts):
                        x, y = locations[bi, q, head, lvl, p].tolist()
                        out[bi, q, head] += weights[bi, q, head, lvl, p] * _bilinear_zero_pad(img, x, y)
    return out.reshape(b, lq, m * d)


def test_core_matches_naive_bilinear_sampling():
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (2, 2), (1, 3)]
    b, lq, m, d, pts = 2, 5, 2, 3, 2
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, m, d, generator=g, dtype=torch.float64)
    # some locations fall outside [0, 1] to exercise the zero padding
    locations = torch.rand(b, lq, m, len(shapes), pts, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(b, lq, m, len(shapes), pts, generator=g, dtype=torch.float64)
    got = ms_deform_attn_core(value, shapes, locations, weights)
    want = _naive(value, shapes, locations, weights)
    assert got.shape == (b, lq, m * d)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_module_samples_at_reference_point_with_zero_offsets():
    """With zero offsets every sample is the value at the reference point: the output is its projection."""
    attn = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=3).double()
    torch.nn.init.zeros_(attn.sampling_offsets.bias)
    value = torch.randn(1, 6, 8, dtype=torch.float64)  # one 2x3 level
    query = torch.randn(1, 6, 8, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(2), torch.arange(3), indexing="ij")
    ref = torch.stack([(xs.flatten() + 0.5) / 3, (ys.flatten() + 0.5) / 2], -1).double()[None, :, None, :]
    out = attn(query, ref, value, [(2, 3)])
    want = attn.output_proj(attn.value_proj(value))
    torch.testing.assert_close(out, want)


def test_pixel_decoder_levels_and_gradients():
    shapes = {"res2": (16, 4), "res3": (24, 8), "res4": (32, 16), "res5": (40, 32)}
    dec = MSDeformAttnPixelDecoder(shapes, conv_dim=32, mask_dim=24, enc_layers=2, nheads=4, dim_feedforward=64)
    feats = {k: torch.randn(2, c, 64 // s, 96 // s, requires_grad=True) for k, (c, s) in shapes.items()}
    mask_features, multi = dec(feats)
    assert mask_features.shape == (2, 24, 16, 24)
    assert [tuple(x.shape) for x in multi] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    (mask_features.sum() + sum(x.sum() for x in multi)).backward()
    for k, f in feats.items():
        assert f.grad is not None and f.grad.abs().sum() > 0, k
