"""`cli.py evaluate`: COCO mask AP of a checkpoint on the validation set, depth read from the cache."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from pipeline.config import Config
from pipeline.engine.checkpoint import load_checkpoint, load_model_state, resolve_checkpoint
from pipeline.engine.depth_source import build_provider, open_reader
from pipeline.engine.distributed import pick_device
from pipeline.engine.inference import predict_loader


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, out_dir: str | Path | None = None,
                        which: str = "auto") -> dict:
    """Evaluate `which` weights ("model", "teacher", or auto: teacher when present) of a checkpoint
    (a file, or a run folder: its last checkpoint).

    Writes `metrics.json` and COCO-format `results.json` (RLE) into `out_dir`.
    """
    from pipeline.data.collate import collate
    from pipeline.data.dataset import build_val_dataset
    from pipeline.evaluation import Evaluator, format_table, save_metrics, save_results
    from pipeline.model.build import build_model

    device = pick_device(cfg.train.device)
    checkpoint = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    key = which if which != "auto" else ("teacher" if "teacher" in ckpt else "model")
    if key not in ckpt:
        raise KeyError(f"{checkpoint}: has no '{key}' weights (it has: {', '.join(sorted(ckpt))})")
    reader = open_reader(cfg)
    provider = build_provider(cfg, reader, device)
    model = build_model(cfg.model, cfg.data.num_classes, provider.channels)
    load_model_state(model, ckpt[key], f"{checkpoint} [{key}]")
    model.to(device).eval()
    val_ds = build_val_dataset(cfg, reader)
    loader = DataLoader(val_ds, batch_size=cfg.eval.batch_size, shuffle=False,
                        num_workers=cfg.data.num_workers, collate_fn=collate)
    preds = predict_loader(model, loader, device, provider, cfg.eval.max_detections, bool(provider.channels))
    evaluator = Evaluator(val_ds.coco, max_detections=cfg.eval.max_detections)
    for image_id, pred in preds:
        evaluator.process([image_id], [pred])
    # which weights were scored: a teacher-student checkpoint holds several, and "auto" picks one
    metrics = {**evaluator.evaluate(), "weights": key, "checkpoint": str(checkpoint),
               "iteration": ckpt.get("iteration")}
    out = Path(out_dir) if out_dir else Path(checkpoint).parent / f"eval_{Path(checkpoint).stem}"
    out.mkdir(parents=True, exist_ok=True)
    save_metrics(metrics, out / "metrics.json")
    save_results(evaluator.results, out / "results.json")
    print(f"{key} weights of {checkpoint} (iteration {ckpt.get('iteration', '?')}) on {cfg.data.val_json}:")
    print(format_table(metrics))
    print(f"wrote {out / 'metrics.json'} and {out / 'results.json'}")
    return metrics
