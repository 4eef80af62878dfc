"""How good a teacher's pseudo-labels are, against ground truth the teacher was not given.

A pseudo-label is *right* when its mask has IoU >= `iou` with an instance of its class, *on an object*
when it has with an instance of any class; an instance is *recalled* when a right pseudo-label covers
it. `scripts/pseudo_label_quality.py` runs a checkpoint's teacher over images with ground truth and
sums these counts for several filter settings (README, "Pseudo-labels by mask confidence").
"""

from __future__ import annotations

from collections.abc import Sequence

from dgseg.pipeline.model.postprocess import mask_iou
from torch import Tensor


def pseudo_label_counts(pseudo: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]],
                        iou: float = 0.5) -> dict[str, int]:
    """Summed over images: `kept` pseudo-labels, `right`, `on_object`, `instances` and `recalled`.

    `pseudo`: per image {"labels" (N,), "masks" (N, H, W) bool}; `targets`: per image {"labels" (M,),
    "masks" (M, H, W) bool} on the same canvas (the labelled targets' format).
    """
    if len(pseudo) != len(targets):
        raise ValueError(f"{len(pseudo)} pseudo-label sets for {len(targets)} target sets")
    out = dict(kept=0, right=0, on_object=0, instances=0, recalled=0)
    for p, t in zip(pseudo, targets, strict=True):
        n, m = len(p["labels"]), len(t["labels"])
        out["kept"] += n
        out["instances"] += m
        if n == 0 or m == 0:
            continue
        if p["masks"].shape[-2:] != t["masks"].shape[-2:]:
            raise ValueError(f"pseudo-label masks {tuple(p['masks'].shape[-2:])} and target masks "
                             f"{tuple(t['masks'].shape[-2:])} are not on one canvas")
        hit = mask_iou(p["masks"], t["masks"].to(p["masks"].device)) >= iou  # (N, M)
        same = p["labels"][:, None].to(t["labels"].device) == t["labels"][None]
        out["on_object"] += int(hit.any(1).sum())
        out["right"] += int((hit & same).any(1).sum())
        out["recalled"] += int((hit & same).any(0).sum())
    return out


def summarise(counts: dict[str, int], images: int) -> dict[str, float]:
    """Per-image and share figures of `pseudo_label_counts` (NaN where undefined)."""
    nan = float("nan")
    kept, inst = counts["kept"], counts["instances"]
    return {"per_image": kept / images if images else nan,
            "precision": counts["right"] / kept if kept else nan,
            "on_object": counts["on_object"] / kept if kept else nan,
            "recall": counts["recalled"] / inst if inst else nan}


__all__ = ["pseudo_label_counts", "summarise"]
