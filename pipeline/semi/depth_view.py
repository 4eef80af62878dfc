"""The teacher's depth view: a cached depth map drawn as a 3-channel image the segmenter can read.

The depth-guided teacher predicts on the RGB image and on this view of the depth map, giving two
pseudo-label sets (see `depth_controller.py`). Steps, per image:

1. **Robust re-normalisation** over the valid (non-padded) pixels: clip to the `low_pct`/`high_pct`
   percentiles (2/98, the cache's own normaliser, see docs/architecture.md), then min-max to [0, 1].
   The cache already holds [0, 1] maps, but after a crop or a resize jitter the visible part of
   the image may span only a slice of that range; re-normalising gives every view full contrast,
   and makes the view invariant to any positive scale and offset of the depth (so a `files`
   source or an online estimator with another range draws the same view). Where the percentiles
   coincide (a mostly flat map) it falls back to the min and max; a constant map draws as 0.
2. **Gray**: the normalised depth replicated to R, G and B (near = bright). The teacher is the EMA
   of a student that trains with grayscale augmentation, so a gray image is in the distribution its
   RGB-pretrained weights already handle; and brightness is monotone in depth, so the only strong
   edges are depth discontinuities, i.e. object contours, which is what the depth view is for.
3. The padding (`valid == False`) stays 0 in every channel, like the padded RGB canvas.

Output values are in [0, 1], like the RGB images the model normalises itself.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def render_depth_view(
    depth: Tensor,
    valid: Optional[Tensor] = None,
    *,
    low_pct: float = 2.0,
    high_pct: float = 98.0,
) -> Tensor:
    """Draw depth maps as images.

    Args:
        depth: (B, 1, H, W) relative depth (any positive scale and offset; 1 = near in the cache).
        valid: (B, H, W) bool, False on padding; None = all valid.
        low_pct, high_pct: percentiles (0..100) clipped before the min-max.
    Returns:
        (B, 3, H, W) float32 in [0, 1], 0 on padding.
    """
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must be (B, 1, H, W), got {tuple(depth.shape)}")
    B, _, H, W = depth.shape
    if valid is not None and tuple(valid.shape) != (B, H, W):
        raise ValueError(f"valid must be (B, H, W) = {(B, H, W)}, got {tuple(valid.shape)}")
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ValueError(f"need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}")

    depth = depth.detach().float()
    norm = torch.zeros(B, H, W, dtype=torch.float32, device=depth.device)
    for b in range(B):
        d = depth[b, 0]
        mask = valid[b].to(torch.bool) if valid is not None else None
        values = d[mask] if mask is not None else d.flatten()
        if values.numel() == 0:
            continue
        lo, hi = _range(values, low_pct / 100.0, high_pct / 100.0)
        if hi > lo:
            norm[b] = ((d - lo) / (hi - lo)).clamp_(0.0, 1.0)
    view = norm[:, None].expand(-1, 3, -1, -1).contiguous()  # gray: (B, 3, H, W)
    if valid is not None:
        view = view * valid[:, None].to(view.dtype)
    return view


def _range(values: Tensor, q_low: float, q_high: float) -> tuple[float, float]:
    """The clip range: percentiles (linear interpolation), or min/max where those coincide."""
    s = values.sort().values
    lo, hi = _quantile_sorted(s, q_low), _quantile_sorted(s, q_high)
    if not _distinct(lo, hi):
        lo, hi = s[0].item(), s[-1].item()
    if not _distinct(lo, hi):
        return 0.0, 0.0  # constant map: no depth information
    return lo, hi


def _distinct(lo: float, hi: float) -> bool:
    # relative, so the decision does not change when the depth is rescaled
    return hi - lo > 1e-6 * max(abs(lo), abs(hi))


def _quantile_sorted(s: Tensor, q: float) -> float:
    """`torch.quantile(..., interpolation="linear")` on sorted values; sort-based, so no size limit."""
    pos = q * (s.numel() - 1)
    i = int(pos)
    j = min(i + 1, s.numel() - 1)
    frac = pos - i
    return (s[i] + (s[j] - s[i]) * frac).item()

