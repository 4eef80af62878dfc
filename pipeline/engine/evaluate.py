"""`cli.py evaluate`: COCO mask AP of a checkpoint on the validation set, depth read from the cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from dgseg.pipeline.config import Config
from dgseg.pipeline.engine.checkpoint import load_checkpoint, load_model_state, resolve_checkpoint
from dgseg.pipeline.engine.depth_source import DepthProvider, build_provider, open_reader
from dgseg.pipeline.engine.distributed import pick_device
from dgseg.pipeline.engine.inference import predict_loader
from torch import nn
from torch.utils.data import DataLoader, Dataset


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, out_dir: str | Path | None = None,
                        which: str = "auto") -> dict:
    """Evaluate weights of a checkpoint (a file, or a run folder: its last checkpoint).

    `which`: "teacher", "student" (the trained model of a teacher-student checkpoint; "model" is the
    same weights), "both" (teacher and student, as Guided Distillation's `SSL.EVAL_WHO BOTH`), or
    "auto" = the teacher when present. Writes `metrics.json` (with `"weights"`: which were evaluated;
    under "both" the teacher's at the top level and the student's under `"student"`) and COCO-format
    `results.json` (RLE; `results_student.json` too under "both") into `out_dir`.
    """
    from dgseg.pipeline.evaluation import format_table, save_metrics, save_results

    checkpoint = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    semi = "teacher" in ckpt
    if which == "auto":
        which = "teacher" if semi else "model"
    keys = {"teacher": ["teacher"], "student": ["model"], "model": ["model"], "both": ["teacher", "model"]}
    if which not in keys:
        raise ValueError(f"evaluate: unknown weights {which!r}; choose auto, teacher, student, model or both")
    for key in keys[which]:
        if key not in ckpt:
            raise KeyError(f"{checkpoint}: has no '{key}' weights (it has: {', '.join(sorted(ckpt))})")
    out = Path(out_dir) if out_dir else Path(checkpoint).parent / f"eval_{Path(checkpoint).stem}"
    out.mkdir(parents=True, exist_ok=True)
    found = {}
    for key in keys[which]:
        name = "student" if key == "model" and semi else key
        metrics, results = _evaluate_weights(cfg, ckpt[key], f"{checkpoint} [{key}]")
        # which weights were scored: a teacher-student checkpoint holds several, and "auto" picks one
        found[name] = ({**metrics, "weights": name, "checkpoint": str(checkpoint),
                        "iteration": ckpt.get("iteration")}, results)
        print(f"{name} weights of {checkpoint} (iteration {ckpt.get('iteration', '?')}) on {cfg.data.val_json}:")
        print(format_table(metrics))
    (first, results), *rest = found.values()
    metrics = dict(first)
    for name, (m, r) in zip(list(found)[1:], rest, strict=True):
        metrics[name] = m
        save_results(r, out / f"results_{name}.json")
    save_metrics(metrics, out / "metrics.json")
    save_results(results, out / "results.json")
    print(f"wrote {out / 'metrics.json'} and {out / 'results.json'}")
    return metrics


@dataclass
class EvalSetup:
    """A model with given weights, in eval mode, and what it needs to read the val split."""

    model: nn.Module
    provider: DepthProvider
    device: torch.device
    val_ds: Dataset
    loader: DataLoader


def eval_setup(cfg: Config, state: dict, source: str) -> EvalSetup:
    """Build the config's model with `state` (from `source`, named in errors) and the val split's loader."""
    from dgseg.pipeline.data.collate import collate
    from dgseg.pipeline.data.dataset import build_val_dataset
    from dgseg.pipeline.model.build import build_model

    device = pick_device(cfg.train.device)
    reader = open_reader(cfg)
    provider = build_provider(cfg, reader, device)
    model = build_model(cfg.model, cfg.data.num_classes, provider.channels)
    load_model_state(model, state, source)
    model.to(device).eval()
    val_ds = build_val_dataset(cfg, reader)
    loader = DataLoader(val_ds, batch_size=cfg.eval.batch_size, shuffle=False,
                        num_workers=cfg.data.num_workers, collate_fn=collate)
    return EvalSetup(model, provider, device, val_ds, loader)


def _evaluate_weights(cfg: Config, state: dict, source: str) -> tuple[dict, list]:
    from dgseg.pipeline.evaluation import Evaluator

    run = eval_setup(cfg, state, source)
    preds = predict_loader(run.model, run.loader, run.device, run.provider, cfg.eval, bool(run.provider.channels))
    evaluator = Evaluator(run.val_ds.coco, max_detections=cfg.eval.max_detections)
    for image_id, pred in preds:
        evaluator.process([image_id], [pred])
    return evaluator.evaluate(), evaluator.results
