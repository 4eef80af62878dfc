"""One image's depth and features as stage two sees them, and the value conventions of the cache.

Relative depth crossing a module boundary is normalised per image to [0, 1] with 1 = nearest
(docs/architecture.md): clip to the image's 2nd/98th percentile, then min-max. int8 storage
keeps one scale per channel (symmetric, max |x| / 127), so each channel loses at most half a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from dgseg.depth_cache.geometry import grid_for_stride


@dataclass
class CacheEntry:
    """depth: (1, h, w) float32 in [0, 1] (1 = nearest); features: name -> (C, h', w') float32;
    every map covers exactly the original image of size `orig_size` (H, W), at its own resolution.
    flipped (caches with flip_views): the entry of the image mirrored left-right, computed by the
    source on that image; same shapes, in the mirrored image's coordinates; else None."""

    depth: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    orig_size: tuple[int, int] = (0, 0)
    flipped: Optional[CacheEntry] = None


def normalise_depth(depth: torch.Tensor, valid: torch.Tensor | None = None, low: float = 0.02) -> torch.Tensor:
    """Per-image normalisation: (B, H, W) or (H, W) inverse depth -> same shape in [0, 1], 1 = nearest.

    Percentiles are taken over `valid` pixels (bool, same shape) when given; a flat image gives zeros."""
    squeeze = depth.dim() == 2
    d = depth.float().unsqueeze(0) if squeeze else depth.float()
    v = None if valid is None else (valid.unsqueeze(0) if squeeze else valid).bool()
    out = torch.empty_like(d)
    probs = torch.tensor([low, 1.0 - low], device=d.device)
    if v is None and d[0].numel() <= 1 << 23:
        # the whole batch in one pass, without reading the percentiles back to the host (on a GPU a
        # read per image would stall the queue); the same values as the loop below
        lo, hi = (q.view(-1, *[1] * (d.dim() - 1)) for q in torch.quantile(d.flatten(1), probs, dim=1))
        span = hi - lo
        out = torch.where(span > 0, (torch.minimum(torch.maximum(d, lo), hi) - lo) / span, torch.zeros_like(d))
        return out[0] if squeeze else out
    for i in range(d.shape[0]):
        values = d[i][v[i]] if v is not None else d[i].reshape(-1)
        if values.numel() > 1 << 23:  # torch.quantile's input limit; a strided sample is plenty
            values = values[:: values.numel() // (1 << 23) + 1]
        if values.numel() == 0:
            out[i] = 0.0
            continue
        lo, hi = (float(t) for t in torch.quantile(values, probs))
        out[i] = ((d[i].clamp(lo, hi) - lo) / (hi - lo)) if hi > lo else torch.zeros_like(d[i])
    return out[0] if squeeze else out


def pool_to_stride(x: torch.Tensor, stride: float) -> torch.Tensor:
    """(..., H, W) -> (..., ceil(H/s), ceil(W/s)) by adaptive average pooling: the cells partition
    the whole area, so the pooled map covers exactly the input (plain s x s means when s divides)."""
    size = grid_for_stride(tuple(x.shape[-2:]), stride)
    if tuple(x.shape[-2:]) == size:
        return x
    lead = x.shape[:-2]
    y = F.adaptive_avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]).float(), size)
    return y.reshape(*lead, *size)


def quantise_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) float -> (int8 (C, h, w), scale (C,) float32) with x ~= q * scale."""
    c = x.shape[0]
    amax = np.abs(x.reshape(c, -1)).max(axis=1) if x.size else np.zeros(c, np.float32)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantise_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of `quantise_int8`: (C, h, w) int8 and (C,) scale -> float32."""
    return q.astype(np.float32) * scale.astype(np.float32).reshape(-1, *([1] * (q.ndim - 1)))
