"""Mask2Former instance inference: model outputs -> per-image instance lists at the original size.

Every (query, class) pair is a candidate scored by its class probability; the top `max_det` are
kept (a query may appear with several classes). Mask logits are cropped to the cells holding the
image (so the padding a batch adds is never read), upsampled bilinearly to input pixels, cropped to
the valid image, resized to the output size and thresholded at 0
(sigmoid 0.5); thresholding after the upsampling keeps sub-cell boundary detail. The final score
is class probability x (mean mask probability inside the mask) ** `mask_score_power`; Mask2Former's
power is 1. A larger power ranks by mask confidence more than by class probability, which helps a
model whose class probabilities are not yet calibrated (few iterations, small objects: README,
"Ranking by mask confidence").

With `mask_nms_sigma > 0`, SOLOv2's Gaussian matrix NMS then lowers the scores of masks that repeat a
better-scored one, class-agnostically and per query (a query's classes share one mask and one decay).
Off by default, as in Mask2Former, whose one-to-one matching is meant to make duplicates rare; after a
short schedule they are not (README).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of bool masks `a` (N, H, W) and `b` (M, H, W) -> (N, M) float32 (0 where both are empty)."""
    fa, fb = a.flatten(1).float(), b.flatten(1).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def matrix_nms_decay(queries: Tensor, scores: Tensor, masks: Tensor, sigma: float) -> Tensor:
    """SOLOv2's Gaussian matrix NMS, per query: the factor (k,) to multiply each candidate's score by.

    Candidates are (query, class) pairs: `queries` (k,) their query, `scores` (k,), `masks` (k, H, W)
    bool (the same mask for a query's candidates). A query is decayed by exp(-sigma * (iou^2 - c^2)),
    minimised over the better-scored queries it overlaps, where iou is their mask IoU and c the
    better one's own largest IoU with a query above it (a suppressor that is itself a duplicate
    suppresses less).
    """
    uq, inv = queries.unique(return_inverse=True)
    best = torch.zeros(len(uq), dtype=scores.dtype, device=scores.device).scatter_reduce(
        0, inv, scores, reduce="amax", include_self=False)
    first = torch.full((len(uq),), len(queries), dtype=torch.long, device=queries.device).scatter_reduce(
        0, inv, torch.arange(len(queries), device=queries.device), reduce="amin")
    order = best.argsort(descending=True)
    ranked = masks[first[order]]
    iou = mask_iou(ranked, ranked).triu(1)  # row: the better-scored
    compensate = iou.max(0).values
    decay_sorted = torch.exp(-sigma * (iou**2 - compensate[:, None] ** 2)).min(0).values
    decay = torch.empty_like(decay_sorted)
    decay[order] = decay_sorted
    return decay[inv]


def masks_to_boxes(masks: Tensor) -> Tensor:
    """(N, H, W) bool -> (N, 4) float xyxy pixel extents (x2, y2 exclusive); empty masks give zeros."""
    n = masks.shape[0]
    boxes = torch.zeros(n, 4, dtype=torch.float32, device=masks.device)
    if n == 0:
        return boxes
    rows = masks.any(2)  # (N, H)
    cols = masks.any(1)  # (N, W)
    nonempty = rows.any(1)
    h, w = masks.shape[-2:]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, h).min(1).values
    y2 = torch.where(rows, ar_h, -1).max(1).values + 1
    x1 = torch.where(cols, ar_w, w).min(1).values
    x2 = torch.where(cols, ar_w, -1).max(1).values + 1
    boxes[nonempty] = torch.stack([x1, y1, x2, y2], 1)[nonempty].float()
    return boxes


@torch.no_grad()
def postprocess(outputs: dict, image_sizes: list[tuple[int, int]], out_sizes: list[tuple[int, int]],
                max_det: int = 100, *, mask_stride: int, mask_score_power: float = 1.0,
                mask_nms_sigma: float = 0.0) -> list[dict[str, Tensor]]:
    """
    Args:
        outputs: {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, h, w)} of the model.
        image_sizes: per image the valid (unpadded) size (h_i, w_i) in input pixels.
        out_sizes: per image the size (H_i, W_i) to return the masks at (the original image).
        max_det: instances kept per image.
        mask_stride: input pixels per mask-logit cell (the model's `mask_stride`; no default, as a wrong one
            shifts and scales every mask without any error).
        mask_score_power: exponent of the mean mask probability in the final score (>= 0; 0 scores by the
            class probability alone).
        mask_nms_sigma: Gaussian matrix NMS strength (SOLOv2 uses 2); 0 turns it off.

    Returns:
        per image {"masks": (N, H_i, W_i) bool, "scores": (N,) float, "labels": (N,) int64,
        "boxes": (N, 4) float xyxy at the output size}, sorted by decreasing score, N <= max_det.
    """
    logits_all = outputs["pred_logits"].float()
    masks_all = outputs["pred_masks"]
    if not (len(image_sizes) == len(out_sizes) == logits_all.shape[0]):
        raise ValueError(f"batch of {logits_all.shape[0]} with {len(image_sizes)} image sizes "
                         f"and {len(out_sizes)} output sizes")
    if not mask_score_power >= 0:
        raise ValueError(f"mask_score_power must be >= 0, got {mask_score_power}")
    if not mask_nms_sigma >= 0:
        raise ValueError(f"mask_nms_sigma must be >= 0, got {mask_nms_sigma}")
    num_classes = logits_all.shape[-1] - 1
    results = []
    for logits, mask_logits, (vh, vw), (oh, ow) in zip(logits_all, masks_all, image_sizes, out_sizes, strict=True):
        scores = logits.softmax(-1)[:, :-1].flatten()  # (Q*K,), query-major
        k = min(max_det, scores.numel())
        top_scores, top_idx = scores.topk(k, sorted=True)
        labels = top_idx % num_classes
        queries = top_idx // num_classes
        ch, cw = -(-int(vh) // mask_stride), -(-int(vw) // mask_stride)  # cells holding image pixels
        m = mask_logits[queries][..., :ch, :cw].float()[None]  # (1, k, ch, cw)
        m = F.interpolate(m, size=(ch * mask_stride, cw * mask_stride), mode="bilinear", align_corners=False)
        m = m[..., : int(vh), : int(vw)]
        m = F.interpolate(m, size=(int(oh), int(ow)), mode="bilinear", align_corners=False)[0]
        binary = m > 0
        prob = m.sigmoid()
        mask_score = (prob * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        final = top_scores * mask_score ** mask_score_power
        if mask_nms_sigma > 0 and k > 1:
            final = final * matrix_nms_decay(queries, final, binary, mask_nms_sigma)
        order = final.argsort(descending=True)
        binary = binary[order]
        results.append({
            "masks": binary,
            "scores": final[order],
            "labels": labels[order].to(torch.int64),
            "boxes": masks_to_boxes(binary),
        })
    return results
