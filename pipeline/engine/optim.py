"""AdamW with a lower backbone learning rate, warm-up and a poly or step schedule (Mask2Former recipe)."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    backbone, norms, rest = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("backbone."):
            backbone.append(p)
        elif p.ndim <= 1:
            norms.append(p)  # norms, biases and embeddings-as-vectors: no weight decay
        else:
            rest.append(p)
    groups = [
        {"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": norms, "lr": cfg.lr, "weight_decay": 0.0},
        {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult, "weight_decay": cfg.weight_decay},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at `step` (0-based)."""
    warm = 1.0
    if cfg.warmup_iters > 0 and step < cfg.warmup_iters:
        warm = 0.001 + (1 - 0.001) * step / cfg.warmup_iters
    if cfg.schedule == "poly":
        decay = (1 - min(step, cfg.max_iter) / max(cfg.max_iter, 1)) ** 0.9
    else:
        decay = cfg.gamma ** sum(step >= s for s in cfg.steps)
    return warm * decay


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
