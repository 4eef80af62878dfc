"""Agreement between two pseudo-label sets of the same images (RGB view vs. depth view).

One of the Depth Controller's measured inputs (see `depth_controller.py`). Per image, masks of the
two sets are matched one-to-one (Hungarian assignment) among pairs with mask IoU > `iou_threshold`
and, with `class_aware`, the same label; the assignment maximises the number of matches first
and their summed IoU second. Over the batch (micro-average):

    agreement = 2 * matches / (n_rgb + n_depth)        (the F-measure of the matching)

over the images where BOTH sets are non-empty: 1 when both teachers find the same instances, 0 when
they share none. An image where one view found nothing says more about that view's teacher (a
depth-view teacher that fires on no image would otherwise read as "no agreement" and push the
controller towards that very set) than about agreement, so it is skipped; when no image has two
non-empty sets the result is None, which the controller treats as "no measurement this step".
`class_aware=False` matches masks whatever their labels: at 80 classes the depth view (no colour
or texture) often gets the class wrong while finding the right instance.

`batch_count_matches` computes every image's IoU matrix on the device and copies them to the host
in one transfer; the assignment solve per image stays on the CPU (tests/semi/semi_reference.py has
the same count for one pair of sets, the reference the batched count is tested against).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from dgseg.pipeline.model.postprocess import mask_iou
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def _solve(ok: np.ndarray, iou: np.ndarray) -> int:
    """Largest one-to-one matching among the admissible pairs `ok`, most summed IoU among those."""
    if not ok.any():
        return 0
    # a weight of (big + IoU) per admissible pair: any matching with more pairs outweighs one
    # with fewer, whatever their IoUs (big > the largest possible number of pairs)
    big = min(ok.shape) + 1.0
    gain = np.where(ok, big + iou, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return int(ok[rows, cols].sum())


def batch_count_matches(
    a_sets: Sequence[dict[str, Tensor]], b_sets: Sequence[dict[str, Tensor]], *,
    iou_threshold: float = 0.5, class_aware: bool = True,
) -> list[int]:  # fmt: skip
    """Per image pair of a batch, the size of the largest one-to-one matching of the two sets' masks
    (IoU > `iou_threshold`, and the same class with `class_aware`); the IoUs cross to the host in one copy."""
    blocks, shapes = [], []
    for a, b in zip(a_sets, b_sets, strict=True):
        na, nb = len(a["labels"]), len(b["labels"])
        shapes.append((na, nb))
        if na == 0 or nb == 0:
            continue
        iou = mask_iou(a["masks"].to(torch.bool), b["masks"].to(device=a["masks"].device, dtype=torch.bool))
        ok = iou > iou_threshold
        if class_aware:
            ok &= a["labels"][:, None] == b["labels"][None, :].to(a["labels"].device)
        # admissible pairs carry their IoU, the others -1: one float tensor holds both
        blocks.append(torch.where(ok, iou, torch.full_like(iou, -1.0)).flatten())
    flat = torch.cat([x.to(blocks[0].device) for x in blocks]).cpu().numpy() if blocks else np.zeros(0)
    counts, pos = [], 0
    for na, nb in shapes:
        if na == 0 or nb == 0:
            counts.append(0)
            continue
        block = flat[pos : pos + na * nb].reshape(na, nb)
        pos += na * nb
        counts.append(_solve(block >= 0, np.maximum(block, 0.0)))
    return counts


def agreement_counts(
    rgb_sets: Sequence[dict[str, Tensor]],
    depth_sets: Sequence[dict[str, Tensor]],
    *,
    iou_threshold: float = 0.5,
    class_aware: bool = True,
) -> tuple[int, int]:
    """(matches, n_rgb + n_depth) summed over the images where both sets are non-empty: sums, so
    processes can add theirs before the ratio is taken."""
    if len(rgb_sets) != len(depth_sets):
        raise ValueError(f"agreement needs one depth set per RGB set, got {len(rgb_sets)} and {len(depth_sets)}")
    counts = batch_count_matches(rgb_sets, depth_sets, iou_threshold=iou_threshold, class_aware=class_aware)
    matches = total = 0
    for r, d, m in zip(rgb_sets, depth_sets, counts, strict=True):
        if len(r["labels"]) == 0 or len(d["labels"]) == 0:
            continue
        total += len(r["labels"]) + len(d["labels"])
        matches += m
    return matches, total


def pseudo_label_agreement(
    rgb_sets: Sequence[dict[str, Tensor]],
    depth_sets: Sequence[dict[str, Tensor]],
    *,
    iou_threshold: float = 0.5,
    class_aware: bool = True,
) -> Optional[float]:
    """F-measure of the matching between RGB and depth pseudo-label sets over a batch (images with an
    empty set skipped), or None if no image has two non-empty sets.

    Args:
        rgb_sets, depth_sets: per-image dicts with `labels` (N,) and `masks` (N, H, W) bool, same images
            in the same order (the output of `make_pseudo_labels` on the two views).
    """
    matches, total = agreement_counts(rgb_sets, depth_sets, iou_threshold=iou_threshold, class_aware=class_aware)
    return None if total == 0 else 2.0 * matches / total
