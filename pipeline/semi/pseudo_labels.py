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
from dgseg.pipeline.model.postprocess import mask_iou
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
    B = logits.shape[0]
    prob = logits.detach().float().softmax(-1)
    not_void = prob.argmax(-1) != num_classes  # (B, Q)
    scores, labels = prob[..., :num_classes].max(-1)  # (B, Q)
    keep = not_void & (scores > score_threshold)

    # the whole batch at once: the kept (image, query) pairs of every image in one set of kernels,
    # so the host waits on the device a fixed number of times per batch, not per image
    owner, query = keep.nonzero(as_tuple=True)
    cut = None if valid is None else valid.to(device=mask_logits.device, dtype=torch.bool)[owner]
    masks = _binary_masks(mask_logits[owner, query], (H, W), mask_threshold, cut)
    s = scores[owner, query]
    big = masks.flatten(1).sum(1) >= min_mask_area
    owner, query, masks, s = owner[big], query[big], masks[big], s[big]
    # by image, and within an image by decreasing score (stable sorts: ties keep query order)
    order = s.argsort(descending=True, stable=True)
    order = order[owner[order].argsort(stable=True)]
    owner, query, masks, s = owner[order], query[order], masks[order], s[order]
    counts = torch.bincount(owner, minlength=B).tolist()
    if dedup_iou is not None and max(counts, default=0) > 1:
        kept = _dedup_per_image(masks, counts, dedup_iou)
        owner, query, masks, s = owner[kept], query[kept], masks[kept], s[kept]
        counts = torch.bincount(owner, minlength=B).tolist()
    lab = labels[owner, query].to(torch.int64)
    s = s.to(torch.float32)
    results, start = [], 0
    for n in counts:
        end = start + n
        results.append({"labels": lab[start:end], "masks": masks[start:end], "scores": s[start:end]})
        start = end
    return results


# interpolate at most this many float elements per call: the kept masks of a whole batch at 512 px
# could otherwise need gigabytes at once
_CHUNK_ELEMENTS = 1 << 26


def _binary_masks(mask_logits: Tensor, size: tuple[int, int], threshold: float,
                  valid: Optional[Tensor] = None) -> Tensor:
    """(N, h, w) logits -> (N, H, W) bool masks, upsampled bilinearly before the sigmoid threshold and
    cut to `valid` (N, H, W) when given."""
    n = mask_logits.shape[0]
    if n == 0:
        return torch.zeros((0, *size), dtype=torch.bool, device=mask_logits.device)
    # sigmoid(x) > t  <=>  x > logit(t): the sigmoid is only summed over each mask's pixels
    cut = math.log(threshold / (1.0 - threshold))
    step = max(1, _CHUNK_ELEMENTS // (size[0] * size[1]))
    masks = []
    for i in range(0, n, step):
        up = F.interpolate(mask_logits[i : i + step].detach().float()[None], size=size, mode="bilinear",
                           align_corners=False)[0]  # fmt: skip
        m = up > cut
        if valid is not None:
            m &= valid[i : i + step]
        masks.append(m)
    return masks[0] if len(masks) == 1 else torch.cat(masks)


def _dedup_per_image(masks: Tensor, counts: list[int], iou_threshold: float) -> Tensor:
    """Greedy mask-IoU suppression within each image's block of `masks` (blocks of `counts`, each
    sorted by score); indices into `masks` of the kept ones. The IoU blocks are computed on the
    device and copied to the host in one transfer; the greedy pass over them is plain Python."""
    blocks, start = [], 0
    for n in counts:
        if n > 1:
            blocks.append(mask_iou(masks[start : start + n], masks[start : start + n]).flatten())
        start += n
    flat = torch.cat(blocks).cpu().tolist() if blocks else []
    kept: list[int] = []
    start, pos = 0, 0
    for n in counts:
        mine: list[int] = []
        for i in range(n):
            if all(flat[pos + i * n + j] <= iou_threshold for j in mine):
                mine.append(i)
        kept.extend(start + i for i in mine)
        pos += n * n if n > 1 else 0
        start += n
    return torch.tensor(kept, dtype=torch.long, device=masks.device)


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
