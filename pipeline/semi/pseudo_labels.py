"""Pseudo-labels: the teacher's raw Mask2Former outputs -> per-image target sets for the student.

From `{"pred_logits" (B, Q, K+1), "pred_masks" (B, Q, h, w)}` (last class = no-object), for each
image, a query becomes a pseudo-instance when every rule holds (after Guided Distillation):

1. its argmax over all K+1 classes is not no-object;
2. its score, the softmax probability of its best non-void class (the label), is > `score_threshold`;
3. its mask, `sigmoid(mask logits upsampled bilinearly to the canvas (H, W)) > mask_threshold`, cut to
   the valid (non-padded) region, covers >= `min_mask_area` pixels of the canvas.

Rule 2 implies rule 1 whenever `score_threshold >= 0.5`; both are kept so that a low threshold
still never turns a no-object query into an instance.

Then near-duplicates are removed (optional, `dedup_iou`): in order of decreasing score, a mask whose
IoU with an already kept mask exceeds `dedup_iou` is dropped, whatever its class. Mask2Former's
queries occasionally fire twice on one object; two targets on one object would make the matcher
push one query to the object and another query to a copy of it, i.e. teach duplicates. One object
has one class, so the check is class-agnostic.

The output has the labelled targets' format (`SetCriterion` consumes it), plus the scores, sorted
by decreasing score:
`[{"labels" (N,) int64, "masks" (N, H, W) bool, "scores" (N,) float32}]`; N may be 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def make_pseudo_labels(
    outputs: Mapping[str, Tensor],
    image_size: tuple[int, int],
    valid: Optional[Tensor] = None,
    *,
    score_threshold: float = 0.7,
    mask_threshold: float = 0.5,
    min_mask_area: int = 5,
    dedup_iou: Optional[float] = 0.9,
) -> list[dict[str, Tensor]]:
    """Filter the teacher's outputs into target sets (see the module docstring for the rules).

    Args:
        outputs: `pred_logits` (B, Q, K+1) and `pred_masks` (B, Q, h, w) logits (e.g. h = H/4).
        image_size: the training canvas (H, W) the masks are upsampled to.
        valid: (B, H, W) bool, False on padding; None = everything valid.
    Returns:
        B dicts: `labels` (N,) int64, `masks` (N, H, W) bool, `scores` (N,) float32.
    """
    logits, mask_logits = outputs["pred_logits"], outputs["pred_masks"]
    if logits.dim() != 3 or mask_logits.dim() != 4 or logits.shape[:2] != mask_logits.shape[:2]:
        raise ValueError(
            f"expected pred_logits (B, Q, K+1) and pred_masks (B, Q, h, w) with the same B, Q; "
            f"got {tuple(logits.shape)} and {tuple(mask_logits.shape)}"
        )
    if logits.shape[-1] < 2:
        raise ValueError(f"pred_logits needs at least one class plus no-object, got {logits.shape[-1]} logits")
    if not 0.0 < mask_threshold < 1.0:
        raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
    H, W = int(image_size[0]), int(image_size[1])
    if valid is not None and tuple(valid.shape) != (logits.shape[0], H, W):
        raise ValueError(f"valid must be (B, H, W) = {(logits.shape[0], H, W)}, got {tuple(valid.shape)}")

    num_classes = logits.shape[-1] - 1
    prob = logits.detach().float().softmax(-1)
    not_void = prob.argmax(-1) != num_classes  # (B, Q)
    scores, labels = prob[..., :num_classes].max(-1)  # (B, Q)
    keep = not_void & (scores > score_threshold)

    results = []
    for b in range(logits.shape[0]):
        idx = keep[b].nonzero().squeeze(1)
        masks = _binary_masks(mask_logits[b, idx], (H, W), mask_threshold)
        if valid is not None:
            masks &= valid[b].to(torch.bool)
        big = masks.flatten(1).sum(1) >= min_mask_area
        idx, masks = idx[big], masks[big]
        s = scores[b, idx]
        order = s.argsort(descending=True)
        idx, masks, s = idx[order], masks[order], s[order]
        if dedup_iou is not None and len(idx) > 1:
            kept = _dedup(masks, dedup_iou)
            idx, masks, s = idx[kept], masks[kept], s[kept]
        results.append({"labels": labels[b, idx].to(torch.int64), "masks": masks, "scores": s.to(torch.float32)})
    return results


def _binary_masks(mask_logits: Tensor, size: tuple[int, int], threshold: float) -> Tensor:
    """(N, h, w) logits -> (N, H, W) bool, upsampled bilinearly before the sigmoid threshold."""
    if mask_logits.shape[0] == 0:
        return torch.zeros((0, *size), dtype=torch.bool, device=mask_logits.device)
    up = F.interpolate(mask_logits.detach().float()[None], size=size, mode="bilinear", align_corners=False)[0]
    # sigmoid(x) > t  <=>  x > logit(t): skips a sigmoid over (N, H, W)
    return up > math.log(threshold / (1.0 - threshold))


def _dedup(masks: Tensor, iou_threshold: float) -> Tensor:
    """Indices of masks kept by greedy mask-IoU suppression; `masks` (N, H, W) sorted by score."""
    iou = mask_iou(masks, masks).cpu().tolist()
    kept: list[int] = []
    for i in range(masks.shape[0]):
        if all(iou[i][j] <= iou_threshold for j in kept):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long, device=masks.device)


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of bool masks `a` (N, H, W) and `b` (M, H, W) -> (N, M) float32 (0 where both are empty)."""
    fa, fb = a.flatten(1).float(), b.flatten(1).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


@dataclass(frozen=True)
class PseudoLabeler:
    """`make_pseudo_labels` with its thresholds bound (built from `SemiConfig` by `from_config`)."""

    score_threshold: float = 0.7
    mask_threshold: float = 0.5
    min_mask_area: int = 5
    dedup_iou: Optional[float] = 0.9

    @classmethod
    def from_config(cls, semi_cfg) -> PseudoLabeler:
        """From a `pipeline.config.SemiConfig`."""
        return cls(
            score_threshold=semi_cfg.score_threshold,
            mask_threshold=semi_cfg.mask_threshold,
            min_mask_area=semi_cfg.min_mask_area,
            dedup_iou=semi_cfg.pseudo_dedup_iou,
        )

    def __call__(
        self, outputs: Mapping[str, Tensor], image_size: tuple[int, int], valid: Optional[Tensor] = None
    ) -> list[dict[str, Tensor]]:
        return make_pseudo_labels(
            outputs,
            image_size,
            valid,
            score_threshold=self.score_threshold,
            mask_threshold=self.mask_threshold,
            min_mask_area=self.min_mask_area,
            dedup_iou=self.dedup_iou,
        )
