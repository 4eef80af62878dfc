"""Resample every spatial field of a `Sample` under one axis-aligned scale + translation.

The geometry is continuous, aligned-corners-False: pixel i of a map of n pixels covering an
extent E spans [i*E/n, (i+1)*E/n). A transform is given as the map from output canvas
coordinates to source image coordinates, `y_src = y_out * scale_y + offset_y` (same for x), in
image pixels. Every field covers the source image's extent at its own resolution, so one
mapping serves all: a crop of image pixels [y0, y1) is the same fractional window of a
37x49 feature map. Sampling uses `grid_sample` (image/depth/features bilinear with border
clamping, masks/valid nearest) and then zeroes what falls outside the source image (padding).
Bilinear fields are first shrunk with an antialiased resize when the mapping downsamples them,
which keeps their extent and so their geometry.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from dgseg.pipeline.data.sample import Sample, check_sample, refuse_flip_view


def _axis(n_out: int, extent_out: float, canvas: int, scale: float, offset: float, src_extent: int):
    """Normalised source coordinates (n_out,) for grid_sample and a bool (n_out,) 'inside the image' mask."""
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (extent_out / n_out)
    src = centre * scale + offset
    inside = (src >= 0) & (src <= src_extent) & (centre <= canvas)
    return (2 * src / src_extent - 1).float(), inside


def resample_map(
    x: torch.Tensor,
    out_hw: tuple[int, int],
    extent: tuple[float, float],
    canvas: tuple[int, int],
    scale: tuple[float, float],
    offset: tuple[float, float],
    src_size: tuple[int, int],
    mode: str,
) -> torch.Tensor:
    """Resample (C, h, w) covering the source image (H, W) = `src_size` to (C, *out_hw) covering `extent`
    output pixels of a `canvas`-sized output; outside the source image (or the canvas) the result is 0/False."""
    is_bool = x.dtype == torch.bool
    c, h, w = x.shape
    if c == 0:
        return x.new_zeros((0, *out_hw))
    gy, in_y = _axis(out_hw[0], extent[0], canvas[0], scale[0], offset[0], src_size[0])
    gx, in_x = _axis(out_hw[1], extent[1], canvas[1], scale[1], offset[1], src_size[1])
    src = x.float()[None]
    if mode == "bilinear":
        # source pixels per output pixel; > 1 means downsampling: low-pass first (extent-preserving resize)
        step_y = extent[0] / out_hw[0] * abs(scale[0]) * h / src_size[0]
        step_x = extent[1] / out_hw[1] * abs(scale[1]) * w / src_size[1]
        if step_y > 1.0 or step_x > 1.0:
            size = (max(1, round(h / max(step_y, 1.0))), max(1, round(w / max(step_x, 1.0))))
            src = F.interpolate(src, size=size, mode="bilinear", align_corners=False, antialias=True)
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]
    out = F.grid_sample(src, grid, mode=mode, padding_mode="border", align_corners=False)[0]
    inside = in_y[:, None] & in_x[None, :]
    if is_bool:
        return (out > 0.5) & inside
    return (out * inside).to(x.dtype)


def _out_size(src: tuple[int, int], size: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int]:
    """Keep a map's density relative to the image (h/H map pixels per image pixel) on the output canvas."""
    return max(1, round(canvas[0] * src[0] / size[0])), max(1, round(canvas[1] * src[1] / size[1]))


def resample_sample(
    sample: Sample,
    canvas: tuple[int, int],
    scale: tuple[float, float],
    offset: tuple[float, float],
    feature_stride: Optional[int] = None,
    drop_empty: bool = True,
) -> Sample:
    """Apply `y_src = y_out * scale + offset` to every spatial field, giving an output canvas (H', W').

    With `feature_stride` s, depth lands at (1, H', W') and features at (C, ceil(H'/s), ceil(W'/s))
    (the final resolution); without, each keeps its density relative to the image. Instances whose
    mask becomes empty (cropped away) are dropped when `drop_empty`.
    """
    check_sample(sample)
    refuse_flip_view(sample, "a resize/crop/pad (resample_sample)")
    size = sample.size
    geo = dict(canvas=canvas, scale=scale, offset=offset, src_size=size)
    image = resample_map(sample.image, canvas, canvas, mode="bilinear", **geo).clamp_(0, 1)
    masks = resample_map(sample.masks, canvas, canvas, mode="nearest", **geo)
    valid = resample_map(sample.valid[None], canvas, canvas, mode="nearest", **geo)[0]
    depth = None
    if sample.depth is not None:
        hw = canvas if feature_stride else _out_size(sample.depth.shape[-2:], size, canvas)
        depth = resample_map(sample.depth, hw, canvas, mode="bilinear", **geo)
    features = {}
    for name, f in sample.features.items():
        if feature_stride:
            hw = (math.ceil(canvas[0] / feature_stride), math.ceil(canvas[1] / feature_stride))
            extent = (hw[0] * feature_stride, hw[1] * feature_stride)
        else:
            hw = _out_size(f.shape[-2:], size, canvas)
            extent = canvas
        features[name] = resample_map(f, hw, extent, mode="bilinear", **geo)
    labels = sample.labels
    if drop_empty and len(masks):
        keep = masks.flatten(1).any(1)
        masks, labels = masks[keep], labels[keep]
    return sample.replace(image=image, masks=masks, labels=labels, valid=valid, depth=depth, features=features)
