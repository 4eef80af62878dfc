"""Train and evaluate the Mask R-CNN anchor: a plain loop after torchvision's detection references.

SGD (lr 0.01, momentum 0.9, weight decay 1e-4) with a linear warm-up from lr/1000, constant after;
the batches come from the project's resumable seeded sampler, so a run is reproducible from
`train.seed`. Evaluation converts Mask R-CNN's outputs (labels 1..K, soft masks pasted at the
image's size) to the project's prediction dicts and scores them with the project's `Evaluator`
(COCO mask AP on the config's val split, category ids mapped back through the annotation file).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from dgseg.pipeline.baselines.adapter import anchor_collate, anchor_datasets
from dgseg.pipeline.baselines.maskrcnn import build_maskrcnn
from dgseg.pipeline.config import Config
from dgseg.pipeline.engine.context import NonFiniteLoss, seed_everything
from dgseg.pipeline.engine.metrics_log import MetricsLog
from dgseg.pipeline.engine.sampler import ResumableBatchSampler, SeededDataset
from torch.utils.data import DataLoader
from tqdm import tqdm

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
WARMUP_FACTOR = 1e-3
# from random init the first steps can blow up (a NaN within 20 steps on 6 scenes at lr 0.01 without it):
# a loose clip on the global gradient norm that leaves ordinary steps alone
CLIP_NORM = 10.0
MASK_THRESHOLD = 0.5  # on Mask R-CNN's pasted mask probabilities, as torchvision's references


@dataclass
class AnchorRun:
    """One trained anchor: its metrics (`Evaluator.evaluate()`), seconds spent, and last losses."""

    mode: str
    iters: int
    batch_size: int
    metrics: dict
    train_s: float
    eval_s: float
    losses: dict[str, float] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return self.train_s + self.eval_s


def to_prediction(output: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One image's Mask R-CNN output -> the project's prediction dict (contiguous labels 0..K-1,
    bool masks (N, H, W) at the image's size)."""
    return {"masks": output["masks"][:, 0] > MASK_THRESHOLD, "scores": output["scores"],
            "labels": output["labels"] - 1, "boxes": output["boxes"]}  # fmt: skip


def _loader(dataset, mode: str, batch_size: int, cfg: Config, train: bool) -> DataLoader:
    collate = functools.partial(anchor_collate, mode=mode)
    workers = cfg.data.num_workers
    if not train:
        return DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=workers,
                          collate_fn=collate)  # fmt: skip
    sampler = ResumableBatchSampler(len(dataset), batch_size, cfg.train.seed, 0, 0, 1)
    return DataLoader(SeededDataset(dataset), batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(cfg.train.seed))


def warmup_lambda(warmup_iters: int):
    """Linear warm-up from WARMUP_FACTOR to 1 over `warmup_iters` steps, then 1."""

    def factor(step: int) -> float:
        if step >= warmup_iters:
            return 1.0
        alpha = step / warmup_iters
        return WARMUP_FACTOR * (1 - alpha) + alpha

    return factor


def train_anchor(cfg: Config, mode: str, reader: Optional[Any], iters: int, batch_size: int,
                 device: torch.device, out_dir: Path, norm: str = "bn",
                 clip_norm: float = CLIP_NORM) -> AnchorRun:
    """Train the anchor in `mode` for `iters` steps of `batch_size` images, then evaluate it on the val split.

    Writes `metrics.jsonl` (losses), `metrics.json` and `results.json` (COCO results, RLE) to `out_dir`.
    """
    if iters < 1 or batch_size < 1:
        raise ValueError(f"bench anchor: need iters >= 1 and batch size >= 1 (got {iters}, {batch_size})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out_dir / "metrics.jsonl")
    log.path.unlink(missing_ok=True)  # a fresh run: never append to an earlier run's log
    seed_everything(cfg.train.seed)
    train_ds, val_ds = anchor_datasets(cfg, reader)
    model = build_maskrcnn(cfg.data.num_classes, mode, cfg.data.image_size, norm, cfg.eval.max_detections).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(min(cfg.train.warmup_iters, iters)))
    batches = iter(_loader(train_ds, mode, batch_size, cfg, train=True))
    model.train()
    t0 = time.perf_counter()
    terms: dict[str, float] = {}
    bar = tqdm(range(iters), desc=f"anchor {mode}", leave=False)
    for it in bar:
        inputs, targets, _ = next(batches)
        inputs = [x.to(device) for x in inputs]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = model(inputs, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            bad = {k: float(v.detach()) for k, v in losses.items()}
            raise NonFiniteLoss(f"anchor {mode}: non-finite loss at iteration {it}: {bad}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        scheduler.step()
        step = it + 1
        if step == iters or (cfg.train.log_period > 0 and step % cfg.train.log_period == 0):
            terms = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in losses.items()}}
            bar.set_postfix(loss=f"{terms['loss']:.3f}")
            log.write({"iter": step, **terms, "lr": scheduler.get_last_lr()[0], "time": time.perf_counter() - t0})
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics = evaluate_anchor(model, val_ds, mode, cfg, device, out_dir)
    return AnchorRun(mode, iters, batch_size, metrics, train_s, time.perf_counter() - t1, terms)


@torch.no_grad()
def evaluate_anchor(model: torch.nn.Module, val_ds, mode: str, cfg: Config, device: torch.device,
                    out_dir: Optional[Path] = None) -> dict:
    """COCO mask AP of the anchor on `val_ds` with the project's `Evaluator`; writes metrics/results to `out_dir`."""
    from dgseg.pipeline.evaluation import Evaluator, save_metrics, save_results

    model.eval()
    evaluator = Evaluator(val_ds.coco, max_detections=cfg.eval.max_detections)
    for inputs, _, image_ids in _loader(val_ds, mode, cfg.eval.batch_size, cfg, train=False):
        outputs = model([x.to(device) for x in inputs])
        evaluator.process(image_ids, [to_prediction(o) for o in outputs])
    metrics = evaluator.evaluate()
    if out_dir is not None:
        save_metrics(metrics, Path(out_dir) / "metrics.json")
        save_results(evaluator.results, Path(out_dir) / "results.json")
    return metrics
