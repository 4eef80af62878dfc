"""Per-image reference forms of the batched semi-supervised parts, kept only so the tests (and
`bench.bench_host_parts`, from a checkout) can compare the batched library forms with them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from dgseg.pipeline.model.postprocess import mask_iou
from dgseg.pipeline.semi.agreement import _solve
from dgseg.pipeline.semi.pseudo_labels import _binary_masks, _dedup_per_image
from torch import Tensor


def per_image_pseudo_labels(
    outputs: Mapping[str, Tensor],
    image_size: tuple[int, int],
    valid: Optional[Tensor] = None,
    *,
    score_threshold: float = 0.7,
    mask_threshold: float = 0.5,
    min_mask_area: int = 5,
    dedup_iou: Optional[float] = 0.9,
) -> list[dict[str, Tensor]]:
    """`make_pseudo_labels` one image at a time (the form before the batch was vectorised)."""
    logits, mask_logits = outputs["pred_logits"], outputs["pred_masks"]
    num_classes = logits.shape[-1] - 1
    prob = logits.detach().float().softmax(-1)
    scores, labels = prob[..., :num_classes].max(-1)
    keep = (prob.argmax(-1) != num_classes) & (scores > score_threshold)
    H, W = int(image_size[0]), int(image_size[1])
    results = []
    for b in range(logits.shape[0]):
        idx = keep[b].nonzero().squeeze(1)
        cut = None if valid is None else valid[b].to(torch.bool).expand(len(idx), H, W)
        masks = _binary_masks(mask_logits[b, idx], (H, W), mask_threshold, cut)
        s = scores[b, idx]
        big = masks.flatten(1).sum(1) >= min_mask_area
        idx, masks, s = idx[big], masks[big], s[big]
        order = s.argsort(descending=True, stable=True)
        idx, masks, s = idx[order], masks[order], s[order]
        if dedup_iou is not None and len(idx) > 1:
            kept = _dedup_per_image(masks, [masks.shape[0]], dedup_iou)
            idx, masks, s = idx[kept], masks[kept], s[kept]
        results.append({"labels": labels[b, idx].to(torch.int64), "masks": masks, "scores": s.to(torch.float32)})
    return results


def count_matches(
    a: dict[str, Tensor], b: dict[str, Tensor], *, iou_threshold: float = 0.5, class_aware: bool = True
) -> int:
    """`batch_count_matches` for one pair of sets: the largest one-to-one matching of `a`'s and `b`'s
    masks (IoU > threshold, same class with `class_aware`)."""
    na, nb = len(a["labels"]), len(b["labels"])
    if na == 0 or nb == 0:
        return 0
    iou = mask_iou(a["masks"].to(torch.bool), b["masks"].to(torch.bool))
    ok = iou > iou_threshold
    if class_aware:
        ok &= a["labels"][:, None] == b["labels"][None, :].to(a["labels"].device)
    return _solve(ok.cpu().numpy(), iou.cpu().numpy())
