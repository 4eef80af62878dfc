"""Hungarian matching of predicted queries to target instances (Mask2Former's matcher).

The cost of pairing query q with target t is
    cost_class * (-p_q(class_t)) + cost_mask * BCE(mask_q, mask_t) + cost_dice * dice(mask_q, mask_t),
with both mask terms computed on the same `num_points` random points for every pair (predictions
at stride 4 and targets at full resolution are read at the same normalised coordinates). The
assignment minimising the summed cost is found by scipy's `linear_sum_assignment`.

`forward` computes the costs of the whole batch in one pass on the outputs' device (targets padded
to the largest count, batched matrix products) and moves them to the host once; only the assignment
solve runs per image, on the CPU. (tests/model/matcher_reference.py writes the same cost for one
image, pair by pair: the reference the batched cost is tested against, to float rounding.)
"""

from __future__ import annotations

from typing import Optional

import torch
from dgseg.pipeline.model.point_sampling import pad_targets, point_sample
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn


def pairwise_sigmoid_ce(inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy over points of every (prediction, target) pair.

    inputs: (Q, P) logits; targets: (N, P) in [0, 1] -> (Q, N).
    """
    pos = nn.functional.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = nn.functional.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / inputs.shape[1]


def pairwise_dice(inputs: Tensor, targets: Tensor) -> Tensor:
    """Dice loss (1 - soft dice, +1 smoothing) of every pair. inputs: (Q, P) logits; targets: (N, P) -> (Q, N)."""
    prob = inputs.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets per image.

    Args:
        cost_class: weight of the class term.
        cost_mask: weight of the point-sampled mask BCE.
        cost_dice: weight of the point-sampled dice loss.
        num_points: points sampled per image (shared by all pairs of that image).
        mask_stride: input pixels per mask-logit cell (targets are padded to the extent it covers).
    """

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0,
                 num_points: int = 12544, mask_stride: int = 4) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matcher costs are 0")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points
        self.mask_stride = mask_stride

    @torch.no_grad()
    def batch_costs(self, logits: Tensor, masks: Tensor, targets: list[dict],
                    points: Optional[Tensor] = None) -> list[Tensor]:
        """The matching cost of every image of a batch at once; one device-to-host copy.

        Args:
            logits: (B, Q, K+1) class logits.
            masks: (B, Q, h, w) mask logits at `mask_stride`.
            targets: per image {"labels": (N_b,) int64, "masks": (N_b, H_b, W_b)}.
            points: (B, P, 2) (x, y) in [0, 1], image b's points; drawn uniformly at random when None.

        Returns:
            per image (Q, N_b) float32 costs, on the CPU.
        """
        logits, masks = logits.float(), masks.float()
        B, Q = logits.shape[:2]
        counts = [len(t["labels"]) for t in targets]
        n_max = max(counts, default=0)
        if n_max == 0:
            return [torch.zeros(Q, 0) for _ in counts]
        dev = masks.device
        if points is None:
            points = torch.rand(B, self.num_points, 2, device=dev)
        points = points.to(device=dev, dtype=masks.dtype)
        # class term: -p(label) for every (query, target) pair; padded targets read class 0 and are cut off
        labels = torch.zeros(B, n_max, dtype=torch.int64, device=dev)
        tgt_points = torch.zeros(B, n_max, points.shape[1], dtype=masks.dtype, device=dev)
        owner = [b for b, n in enumerate(counts) for _ in range(n)]
        tgt = torch.cat([pad_targets(t["masks"].to(dev, masks.dtype), masks.shape[-2:], self.mask_stride)
                         for t, n in zip(targets, counts, strict=True) if n])  # fmt: skip
        owner_t = torch.tensor(owner, device=dev)
        slot = torch.tensor([j for n in counts for j in range(n)], device=dev)
        sampled = point_sample(tgt[:, None], points[owner_t])[:, 0]  # (sum N, P)
        tgt_points[owner_t, slot] = sampled
        labels[owner_t, slot] = torch.cat([t["labels"].to(dev) for t, n in zip(targets, counts, strict=True) if n])
        prob = logits.softmax(-1)
        cost_class = -prob.gather(2, labels[:, None, :].expand(B, Q, n_max))
        pred_points = point_sample(masks, points)  # (B, Q, P): the Q maps of image b read at b's points
        num_p = pred_points.shape[-1]
        # BCE with logits against 1 and against 0 is softplus(-x) and softplus(x): no target tensors
        pos = nn.functional.softplus(-pred_points)
        neg = nn.functional.softplus(pred_points)
        t_tr = tgt_points.transpose(1, 2)  # (B, P, N_max)
        cost_mask = (pos @ t_tr + neg @ (1 - t_tr)) / num_p
        prob_m = pred_points.sigmoid()
        numerator = 2 * prob_m @ t_tr
        denominator = prob_m.sum(-1)[:, :, None] + tgt_points.sum(-1)[:, None, :]
        cost_dice = 1 - (numerator + 1) / (denominator + 1)
        cost = (self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice).cpu()
        return [cost[b, :, :n] for b, n in enumerate(counts)]

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """
        Args:
            outputs: {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, h, w)}.
            targets: per image {"labels": (N,) int64, "masks": (N, H, W)}.

        Returns:
            per image (query indices (M,), target indices (M,)) int64 with M = min(Q, N), sorted by query.
        """
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(f"{len(targets)} target sets for a batch of {outputs['pred_logits'].shape[0]}")
        indices = []
        costs = self.batch_costs(outputs["pred_logits"], outputs["pred_masks"], targets)
        for cost in costs:
            if cost.shape[1] == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            if not torch.isfinite(cost).all():
                raise FloatingPointError("matching cost is not finite (NaN/inf in the predictions)")
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
