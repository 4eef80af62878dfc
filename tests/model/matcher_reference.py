"""The matching cost of one image, written pair by pair: the reference `HungarianMatcher.batch_costs`
is tested against (and `bench.bench_host_parts`, from a checkout, times it against)."""

from __future__ import annotations

from typing import Optional

import torch
from dgseg.pipeline.model.matcher import HungarianMatcher, pairwise_dice, pairwise_sigmoid_ce
from dgseg.pipeline.model.point_sampling import pad_targets, point_sample
from torch import Tensor


@torch.no_grad()
def cost_matrix(matcher: HungarianMatcher, logits: Tensor, masks: Tensor, labels: Tensor, target_masks: Tensor,
                points: Optional[Tensor] = None) -> Tensor:
    """(Q, N) float32 costs on the CPU of one image: logits (Q, K+1), mask logits (Q, h, w) at the
    matcher's `mask_stride`, labels (N,), target masks (N, H, W); points (P, 2) (x, y) in [0, 1],
    uniform at random when None."""
    logits, masks = logits.float(), masks.float()
    if points is None:
        points = torch.rand(matcher.num_points, 2, device=masks.device)
    cost_class = -logits.softmax(-1)[:, labels]
    tgt = pad_targets(target_masks.to(masks.dtype), masks.shape[-2:], matcher.mask_stride)
    tgt_points = point_sample(tgt[None], points[None].to(masks.dtype))[0]  # (N, P)
    pred_points = point_sample(masks[None], points[None].to(masks.dtype))[0]  # (Q, P)
    cost = (matcher.cost_class * cost_class + matcher.cost_mask * pairwise_sigmoid_ce(pred_points, tgt_points)
            + matcher.cost_dice * pairwise_dice(pred_points, tgt_points))
    return cost.cpu()
