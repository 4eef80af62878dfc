"""Everything a training run builds from its `Config`, built once and shared by both trainers."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dgseg.pipeline.config import Config
from dgseg.pipeline.config.loading import save_config
from dgseg.pipeline.engine.depth_source import DepthProvider, build_provider, open_reader
from dgseg.pipeline.engine.distributed import DistInfo, init_distributed, pick_device
from dgseg.pipeline.engine.metrics_log import MetricsLog
from dgseg.pipeline.engine.optim import build_optimizer, build_scheduler
from dgseg.pipeline.engine.sampler import ResumableBatchSampler, SeededDataset
from torch import nn
from torch.utils.data import DataLoader


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss; the run stopped without saving over good checkpoints."""


@dataclass
class RunContext:
    cfg: Config
    dist: DistInfo
    device: torch.device
    out_dir: Path
    reader: Any
    provider: DepthProvider
    num_classes: int
    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    log: MetricsLog
    val_loader: DataLoader
    coco_val: Any

    @property
    def use_depth(self) -> bool:
        return bool(self.provider.channels)

    @property
    def autocast(self):
        enabled = self.cfg.train.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def process_seed(seed: int, rank: int) -> int:
    """The global-RNG seed of process `rank` after model construction (distinct per process)."""
    return (seed + 1_000_003 * rank) % (2**31)


def build_context(cfg: Config) -> RunContext:
    from dgseg.pipeline.data.collate import collate
    from dgseg.pipeline.data.dataset import build_val_dataset
    from dgseg.pipeline.model.build import build_criterion, build_model

    device = pick_device(cfg.train.device)
    dist = init_distributed(device)
    device = pick_device(cfg.train.device, dist)
    seed_everything(cfg.train.seed)
    out_dir = Path(cfg.train.output_dir)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    reader = open_reader(cfg)
    provider = build_provider(cfg, reader, device)
    model = build_model(cfg.model, cfg.data.num_classes, provider.channels).to(device)
    criterion = build_criterion(cfg.model, cfg.data.num_classes).to(device)
    if dist.rank:
        # every process built the same initial model (above); from here on the global RNG draws what
        # must differ between processes (strong augmentations, sampled points). Rank 0 keeps the
        # single-process stream, so a one-process run is unchanged
        seed_everything(process_seed(cfg.train.seed, dist.rank))
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    val_ds = build_val_dataset(cfg, reader)
    val_loader = DataLoader(
        _shard(val_ds, dist), batch_size=cfg.eval.batch_size, shuffle=False,
        num_workers=cfg.data.num_workers, collate_fn=collate,
    )
    log = MetricsLog(out_dir / "metrics.jsonl", dist.is_main)
    return RunContext(cfg, dist, device, out_dir, reader, provider, cfg.data.num_classes, model, criterion,
                      optimizer, scheduler, log, val_loader, val_ds.coco)


def _shard(dataset, dist: DistInfo):
    if dist.world_size == 1:
        return dataset
    return torch.utils.data.Subset(dataset, list(range(dist.rank, len(dataset), dist.world_size)))


def train_loader(dataset, cfg: Config, dist: DistInfo, batch_size: int, start_iter: int, seed_offset: int = 0):
    """An infinite, resumable loader of collated batches (this process's share)."""
    from dgseg.pipeline.data.collate import collate

    sampler = ResumableBatchSampler(len(dataset), batch_size, cfg.train.seed + seed_offset, start_iter,
                                    dist.rank, dist.world_size)
    # its own generator: creating the iterator must not draw from the global RNG, which a resumed
    # run has just restored for the model's own sampling (points, etc.)
    return DataLoader(SeededDataset(dataset), batch_sampler=sampler, collate_fn=collate,
                      num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0,
                      generator=torch.Generator().manual_seed(cfg.train.seed + seed_offset))


def check_finite(losses: dict[str, torch.Tensor], iteration: int, out_dir: Path) -> None:
    total = sum(losses.values())
    if not torch.isfinite(total):
        from dgseg.pipeline.engine.checkpoint import last_checkpoint

        bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v)}
        last = last_checkpoint(out_dir)
        raise NonFiniteLoss(
            f"non-finite loss at iteration {iteration}: {bad}; stopped without saving. "
            f"Last good checkpoint: {last if last else 'none yet'}"
        )
