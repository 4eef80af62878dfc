"""Geometric transforms keep every field aligned: checked with coordinate-valued maps.

The image holds its own source coordinates (channel 0 = x, channel 1 = y, normalised to [0, 1]);
depth holds x and a coarser feature map holds (y, x), each sampled on its own grid; masks are
bands of x. After random flips, large-scale jitter and resizes every field must still agree
with the image's coordinates (in the interior up to a tenth of a source pixel, within
interpolation error at the borders).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dgseg.pipeline.data.photometric import StrongAugment, two_views
from dgseg.pipeline.data.sample import new_sample
from dgseg.pipeline.data.synthetic import render_scene
from dgseg.pipeline.data.transforms import (
    HFlip,
    LargeScaleJitter,
    MatchResolution,
    Resize,
    build_test_transforms,
    build_train_transforms,
    flip,
)


def _coords(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    x = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    return y[:, None].expand(h, w), x[None, :].expand(h, w)


def _coordinate_sample(h=60, w=80):
    yi, xi = _coords(h, w)
    image = torch.stack([xi, yi, torch.full_like(xi, 0.5)])
    _, xd = _coords(45, 61)
    yf, xf = _coords(13, 17)
    masks = torch.stack([(xi * 4).floor() == k for k in range(4)])
    return new_sample(image, masks, torch.arange(4), depth=xd[None].clone(), features={"f": torch.stack([yf, xf])},
                      image_id="7")  # fmt: skip


def _check_alignment(s, stride):
    """Every field agrees with the image's coordinate channels; returns (interior pixels, feature cells checked)."""
    h, w = s.size
    x_img, y_img = s.image[0], s.image[1]
    assert s.depth.shape == (1, h, w)
    fh, fw = -(-h // stride), -(-w // stride)
    assert s.features["f"].shape == (2, fh, fw)
    # interior: away from the source image's border (where clamping/truncated filters act) and from padding
    eroded = -F.max_pool2d(-s.valid[None, None].float(), 7, 1, 3, ceil_mode=False)[0, 0] > 0.5
    eroded[:3], eroded[-3:], eroded[:, :3], eroded[:, -3:] = False, False, False, False
    interior = eroded & (x_img > 0.12) & (x_img < 0.88) & (y_img > 0.12) & (y_img < 0.88)
    # image and padding
    assert (s.image[:, ~s.valid] == 0).all() and (s.depth[0][~s.valid] == 0).all()
    # depth (x): in the interior within a tenth of a source pixel of each map (antialiased downsampling of a
    # linear map is linear only up to that), within interpolation error elsewhere on valid pixels
    err = (s.depth[0] - x_img).abs()
    assert err[interior].max() < 0.1 * (1 / 61 + 1 / 80), err[interior].max()
    assert err[s.valid].max() < 0.06
    # features at stride s: cell (i, j) covers canvas pixels [s*i, s*i+s); compare with the cell's image mean
    pad_h, pad_w = fh * stride - h, fw * stride - w
    y_pad = F.pad(y_img, (0, pad_w, 0, pad_h))
    x_pad = F.pad(x_img, (0, pad_w, 0, pad_h))
    inner = F.pad(interior.float(), (0, pad_w, 0, pad_h))
    full = F.avg_pool2d(inner[None], stride)[0] == 1.0
    # ... and so are its 8 neighbours: a downsampling filter reaches about one output cell around each cell
    full = -F.max_pool2d(-full[None].float(), 3, 1, 1)[0] > 0.5
    mean_y = F.avg_pool2d(y_pad[None], stride)[0]
    mean_x = F.avg_pool2d(x_pad[None], stride)[0]
    f = s.features["f"]
    if full.any():
        assert (f[0] - mean_y)[full].abs().max() < 0.1 * (1 / 13 + 1 / 60)
        assert (f[1] - mean_x)[full].abs().max() < 0.1 * (1 / 17 + 1 / 80)
    # masks: band k holds x in [k/4, (k+1)/4) up to half a source pixel; interior pixels are covered once
    for m, k in zip(s.masks, s.labels.tolist(), strict=True):
        xs = x_img[m & s.valid]
        assert xs.min() > k / 4 - 1 / 80 and xs.max() < (k + 1) / 4 + 1 / 80
    assert (s.masks.sum(0)[interior] == 1).all()
    assert not s.masks[:, ~s.valid].any()
    return int(interior.sum()), int(full.sum())


def test_train_pipeline_keeps_fields_aligned():
    t = build_train_transforms(image_size=64, min_scale=0.3, max_scale=2.0, hflip=True, feature_stride=8)
    g = torch.Generator().manual_seed(0)
    flipped, padded, cropped, cells = 0, 0, 0, 0
    for _ in range(40):
        s = t(_coordinate_sample(), generator=g)
        assert s.size == (64, 64) and s.image_id == "7" and s.orig_size == (60, 80)
        cells += _check_alignment(s, 8)[1]
        x = s.image[0][s.valid]
        flipped += int(x[0] > x[-1])  # first valid pixel has a larger x than the last: mirrored
        padded += int(not s.valid.all())
        cropped += int(s.valid.all())
    assert flipped > 5 and padded > 5 and cropped > 5  # the draws did exercise flips, pads and crops
    assert cells > 200  # and the feature maps were compared on many cells


@pytest.mark.parametrize("test_size, stride", [(48, 8), (50, 8), (90, 16)])
def test_test_time_resize(test_size, stride):
    s = build_test_transforms(test_size, stride)(_coordinate_sample())
    assert min(s.size) == test_size and s.valid.all()
    assert abs(s.size[1] / s.size[0] - 80 / 60) < 0.03
    assert min(_check_alignment(s, stride)) > 0
    # deterministic
    assert torch.equal(build_test_transforms(test_size, stride)(_coordinate_sample()).image, s.image)


def test_keeping_density_then_matching_resolution():
    # without feature_stride a resize keeps each map's own density; the final step then aligns them
    s = Resize(90, 120)(_coordinate_sample())
    assert s.depth.shape == (1, 68, 92) and s.features["f"].shape == (2, 20, 26)
    s = HFlip(p=1.0)(s)
    _check_alignment(MatchResolution(8)(s), 8)


def test_lsj_drops_cropped_away_instances():
    g = torch.Generator().manual_seed(1)
    t = LargeScaleJitter(32, 3.0, 3.0)  # 3x zoom: a 32 px crop of a 240 px wide image
    s = t(_coordinate_sample(), generator=g)
    assert len(s.masks) < 4 and len(s.masks) == len(s.labels)
    assert s.masks.flatten(1).any(1).all()


def test_unknown_field_raises():
    s = _coordinate_sample()
    s.normals = torch.zeros(3, 60, 80)  # a spatial map no transform knows
    for t in (HFlip(p=1.0), LargeScaleJitter(32, 0.5, 1.0), Resize(10, 10), MatchResolution(8)):
        with pytest.raises(TypeError, match="normals"):
            t(s)
    s = _coordinate_sample()
    s.features["bad"] = torch.zeros(60, 80)  # not (C, h, w)
    with pytest.raises(ValueError, match="bad"):
        HFlip(p=1.0)(s)


def test_flipping_files_source_maps_equals_maps_of_flipped_image(tmp_path):
    from dgseg.depth_cache.estimators.files import FilesDepth

    source = FilesDepth(tmp_path, "depth", ["depth_s8", "depth_s16"])
    rgb, depth_mm, masks, labels = render_scene(np.random.default_rng(0), 128)
    image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255

    def sample(img, dmm, m):
        out = source(torch.from_numpy(dmm.astype(np.float32)))
        feats = {k: v[0] for k, v in out.features.items()}  # (1, 1, h, w) -> (1, h, w)
        return new_sample(img, torch.from_numpy(m), torch.from_numpy(labels), depth=out.depth, features=feats)

    a = flip(sample(image, depth_mm, masks))
    b = sample(image.flip(-1), depth_mm[:, ::-1].copy(), masks[:, :, ::-1].copy())
    assert torch.equal(a.image, b.image) and torch.equal(a.masks, b.masks) and torch.equal(a.depth, b.depth)
    assert set(a.features) == {"depth_s8", "depth_s16"}
    for k in b.features:
        # the source's pooling sums a mirrored window in another order: equal up to float rounding
        torch.testing.assert_close(a.features[k], b.features[k], rtol=0, atol=1e-6)


def test_two_views_share_geometry():
    s = build_train_transforms(64, 0.5, 1.5, True, 8)(_coordinate_sample(), generator=torch.Generator().manual_seed(2))
    weak, strong = two_views(s, StrongAugment(jitter_p=1.0), generator=torch.Generator().manual_seed(0))
    assert weak is s
    assert not torch.equal(strong.image, weak.image)
    assert strong.masks is weak.masks and strong.depth is weak.depth and strong.features is weak.features
    assert (strong.image[:, ~s.valid] == 0).all() and strong.image.min() >= 0 and strong.image.max() <= 1
