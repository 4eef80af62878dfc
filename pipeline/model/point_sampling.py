"""Point sampling of masks (PointRend, Kirillov et al. 2020), used by the matcher and the criterion.

Losses on a few thousand sampled points instead of whole masks: the predictions (stride 4) and
the targets (full resolution) are read at the same normalised coordinates, so the target keeps
its full resolution without upsampling the predictions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(masks: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of masks at points.

    Args:
        masks: (N, C, H, W).
        coords: (N, P, 2) as (x, y) in [0, 1] of the map's extent.

    Returns:
        (N, C, P).
    """
    out = F.grid_sample(masks, 2.0 * coords[:, :, None, :] - 1.0, mode="bilinear", align_corners=False)
    return out[..., 0]


def uncertain_point_coords(
    logits: Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> Tensor:
    """Points concentrated where the prediction is uncertain (logit near 0), plus random ones.

    Oversamples `num_points * oversample_ratio` random points, keeps the
    `importance_sample_ratio * num_points` most uncertain, fills the rest uniformly at random.

    Args:
        logits: (N, 1, h, w) mask logits.

    Returns:
        (N, num_points, 2) as (x, y) in [0, 1].
    """
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=logits.device, dtype=logits.dtype)
    uncertainty = -point_sample(logits, coords).abs()[:, 0]  # (N, num_sampled)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    if num_random > 0:
        chosen = torch.cat([chosen, torch.rand(n, num_random, 2, device=logits.device, dtype=logits.dtype)], 1)
    return chosen


def pad_targets(target_masks: Tensor, pred_size: tuple[int, int], stride: int = 4) -> Tensor:
    """Target masks (N, H, W) zero-padded at the bottom/right to the extent the predictions cover.

    The mask logits (h, w) at `stride` cover (h * stride, w * stride) input pixels, which exceeds
    (H, W) when the input was not a multiple of the stride; padding keeps both in one frame.
    """
    h, w = pred_size[0] * stride, pred_size[1] * stride
    th, tw = target_masks.shape[-2:]
    if th > h or tw > w:
        raise ValueError(
            f"target masks of size {(th, tw)} exceed the {(h, w)} pixels that the {tuple(pred_size)} mask "
            f"predictions cover at stride {stride}; targets must be at the input image's resolution"
        )
    if (th, tw) == (h, w):
        return target_masks
    return F.pad(target_masks, (0, w - tw, 0, h - th))
