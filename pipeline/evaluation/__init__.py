"""COCO evaluation: predictions to COCO results (RLE), `COCOeval` mask AP, pictures.

Metrics are percentages (0..100), as in detectron2. Typical use (training loop, `cli.py evaluate`):

    evaluator = Evaluator(val_json_path)           # or a pycocotools COCO object
    for batch in loader:
        evaluator.process(batch.image_ids, postprocess(model(...), ...))
    metrics = evaluator.evaluate()                 # {"AP", "AP50", ..., "per_class_AP"}
    print(format_table(metrics))
"""

from dgseg.pipeline.evaluation.coco_eval import evaluate_segm, format_table, load_coco_gt, save_metrics
from dgseg.pipeline.evaluation.evaluator import Evaluator
from dgseg.pipeline.evaluation.results import (
    category_names,
    contiguous_category_ids,
    load_results,
    prediction_to_results,
    save_results,
)
from dgseg.pipeline.evaluation.visualize import draw_instances, plot_curves, save_instances_png

__all__ = [
    "Evaluator",
    "category_names",
    "contiguous_category_ids",
    "draw_instances",
    "evaluate_segm",
    "format_table",
    "load_coco_gt",
    "load_results",
    "plot_curves",
    "prediction_to_results",
    "save_instances_png",
    "save_metrics",
    "save_results",
]
