"""Where the AP goes: is an instance segmented at all, and does the best such prediction have its class.

Mask AP mixes two failures: masks that miss the instance and masks that find it under the wrong class.
Class-agnostic AP (`evaluate_segm(..., class_agnostic=True)`) scores the first; this scores the second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO


def instance_class_hits(coco_gt: COCO, results: Sequence[dict], iou: float = 0.5) -> dict:
    """For every non-crowd ground-truth instance: is there a prediction (any class) with mask IoU >= `iou`,
    and is the highest-scored of those (on a tie, the one of highest IoU) of the instance's class?

    Returns {"instances": n, "found": share found (0..1), "right_class": share of the found ones whose
    best-scored prediction has the right class (NaN when none is found)}.
    """
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    total = found = right = 0
    for image_id in coco_gt.getImgIds():
        anns = [a for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image_id)) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        total += len(anns)
        dets = by_image.get(image_id, [])
        if not dets:
            continue
        ious = mask_utils.iou([d["segmentation"] for d in dets], [coco_gt.annToRLE(a) for a in anns],
                              [0] * len(anns))  # (detections, instances)  # fmt: skip
        scores = np.array([d["score"] for d in dets])
        for j, ann in enumerate(anns):
            hits = np.flatnonzero(ious[:, j] >= iou)
            if hits.size:
                found += 1
                best = hits[np.lexsort((-ious[hits, j], -scores[hits]))[0]]  # top score; ties: best IoU
                right += int(dets[best]["category_id"] == ann["category_id"])
    return {"instances": total, "found": found / total if total else float("nan"),
            "right_class": right / found if found else float("nan")}  # fmt: skip
