"""Run a model over the validation loader and score it with COCO mask AP."""

from __future__ import annotations

from pathlib import Path

import torch
from dgseg.pipeline.config import EvalConfig
from torch import nn
from tqdm import tqdm


def mask_stride_of(model: nn.Module) -> int:
    """Input pixels per cell of the model's `pred_masks` (through a DDP wrapper)."""
    return getattr(model, "module", model).mask_stride


def postprocess_outputs(outputs: dict, sizes: list[tuple[int, int]], orig_sizes: list[tuple[int, int]],
                        eval_cfg: EvalConfig, mask_stride: int) -> list[dict]:
    """The model's outputs as instances at the original image sizes, with the config's inference settings
    (`eval.max_detections`, `eval.mask_score_power`, `eval.mask_nms_sigma`)."""
    from dgseg.pipeline.model.postprocess import postprocess

    return postprocess(outputs, sizes, orig_sizes, eval_cfg.max_detections, mask_stride=mask_stride,
                       mask_score_power=eval_cfg.mask_score_power, mask_nms_sigma=eval_cfg.mask_nms_sigma)


# inference mode, not only no_grad: no graph is recorded and no version counters are kept
@torch.inference_mode()
def predict_loader(model: nn.Module, loader, device: torch.device, provider, eval_cfg: EvalConfig,
                   use_depth: bool, show_progress: bool = True) -> list[tuple[str, dict]]:
    """(image_id, prediction at the original size) for every image this process sees."""
    was_training = model.training
    model.eval()
    out: list[tuple[str, dict]] = []
    try:
        for batch in tqdm(loader, desc="inference", disable=not show_progress, leave=False):
            batch = batch.to(device)
            provider.fill(batch)
            outputs = model(batch.images, batch.features if use_depth else None, ~batch.valid)
            sizes = [(int(v.any(1).sum()), int(v.any(0).sum())) for v in batch.valid]  # valid = top-left block
            preds = postprocess_outputs(outputs, sizes, [tuple(s) for s in batch.orig_sizes], eval_cfg,
                                        mask_stride_of(model))
            out.extend((str(i), {k: v.cpu() for k, v in p.items()})
                       for i, p in zip(batch.image_ids, preds, strict=True))
    finally:  # a failed evaluation inside training must not leave the model in eval mode
        model.train(was_training)
    return out


def evaluate_model(model: nn.Module, loader, coco_gt, device: torch.device, provider, eval_cfg: EvalConfig,
                   use_depth: bool, show_progress: bool = True, output_dir: Path | None = None) -> dict:
    """COCO segm metrics over the whole val set (the Evaluator gathers every process's results;
    ranks other than 0 get {}). With `output_dir`, rank 0 also writes the predictions there
    (`coco_results.json`) with `metrics.json`."""
    from dgseg.pipeline.evaluation import Evaluator

    evaluator = Evaluator(coco_gt, max_detections=eval_cfg.max_detections, output_dir=output_dir)
    for image_id, pred in predict_loader(model, loader, device, provider, eval_cfg, use_depth, show_progress):
        evaluator.process([image_id], [pred])
    return evaluator.evaluate()
