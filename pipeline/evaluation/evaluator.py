"""`Evaluator`: accumulate predictions batch by batch, then COCO mask AP.

Independent of the model and the data loader: it sees image ids and per-image prediction dicts
(`pipeline.model.postprocess` output) and a COCO ground truth (object or annotation file).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from dgseg.pipeline.evaluation.coco_eval import evaluate_segm, load_coco_gt, save_metrics
from dgseg.pipeline.evaluation.results import (
    coco_image_id,
    contiguous_category_ids,
    prediction_to_results,
    save_results,
)
from pycocotools.coco import COCO


class Evaluator:
    """Collects COCO results over batches; `evaluate()` returns `evaluate_segm`'s metrics.

    `restrict_to_processed`: evaluate on the images passed to `process` only (an image processed
    with no detection still counts: its ground truth is missed), so a periodic evaluation on part
    of the validation set is not penalised for the images it skipped. An image id seen twice
    (DistributedSampler pads the last batch by repeating images) keeps its first predictions.
    Under torch.distributed, `evaluate()` gathers every process's results; rank 0 returns the
    metrics and the other ranks return `{}`.
    """

    def __init__(
        self,
        coco_gt: COCO | str | Path,
        *,
        score_threshold: float = 0.0,
        max_detections: int = 100,
        restrict_to_processed: bool = True,
        output_dir: str | Path | None = None,
    ) -> None:
        self.coco_gt = coco_gt if isinstance(coco_gt, COCO) else load_coco_gt(coco_gt)
        self.category_ids = contiguous_category_ids(self.coco_gt)
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.restrict_to_processed = restrict_to_processed
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._results: dict[int, list[dict]] = {}
        self._gt_ids = set(self.coco_gt.getImgIds())

    def reset(self) -> None:
        self._results = {}

    def process(self, image_ids: Sequence[int | str], predictions: Sequence[dict[str, Any]]) -> None:
        """Add one batch: `predictions[i]` (masks (N,H,W) bool at the original size, scores, labels,
        boxes) belongs to `image_ids[i]`."""
        if len(image_ids) != len(predictions):
            raise ValueError(f"{len(image_ids)} image ids but {len(predictions)} predictions")
        for image_id, pred in zip(image_ids, predictions, strict=True):
            img_id = coco_image_id(image_id)
            if img_id not in self._gt_ids:
                raise ValueError(f"image id {image_id!r} is not in the ground-truth annotations")
            if img_id in self._results:
                continue
            self._results[img_id] = prediction_to_results(
                img_id,
                pred,
                self.category_ids,
                score_threshold=self.score_threshold,
                max_detections=self.max_detections,
            )

    @property
    def results(self) -> list[dict]:
        """All COCO results so far, in image-id order."""
        return [r for img_id in sorted(self._results) for r in self._results[img_id]]

    @property
    def image_ids(self) -> list[int]:
        return sorted(self._results)

    def _gathered(self) -> dict[int, list[dict]] | None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self._results
        parts: list[dict[int, list[dict]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self._results)
        if dist.get_rank() != 0:
            return None
        merged: dict[int, list[dict]] = {}
        for part in parts:
            for img_id, res in part.items():
                merged.setdefault(img_id, res)
        return merged

    def evaluate(self) -> dict:
        """COCO mask AP over the processed images (or all ground-truth images); `{}` off rank 0.

        With `output_dir`, also writes `coco_results.json` and `metrics.json` there.
        """
        per_image = self._gathered()
        if per_image is None:
            return {}
        results = [r for img_id in sorted(per_image) for r in per_image[img_id]]
        image_ids = sorted(per_image) if self.restrict_to_processed else None
        if image_ids is not None and not image_ids:
            raise ValueError("Evaluator.evaluate: no image was processed")
        metrics = evaluate_segm(self.coco_gt, results, image_ids)
        if self.output_dir is not None:
            save_results(results, self.output_dir / "coco_results.json")
            save_metrics(metrics, self.output_dir / "metrics.json")
        return metrics
