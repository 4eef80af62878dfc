"""AdamW with Mask2Former's parameter groups, warm-up and a poly or step schedule per training stage."""

from __future__ import annotations

import dataclasses

import torch
from dgseg.pipeline.config import TrainConfig
from torch import nn

# Mask2Former's `build_optimizer` lists these as norm modules (weight_decay_norm); FrozenBatchNorm2d
# holds no parameters, so it needs no entry
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Mask2Former's groups: weight decay 0 (`weight_decay_norm`) for every parameter of a norm layer,
    `weight_decay_embed` for nn.Embedding tables (the queries), `weight_decay` for everything else
    (conv/linear weights and biases, the pixel decoder's level embedding); `backbone_lr_mult` x lr
    for the backbone. Frozen parameters (requires_grad False) are left out."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr = cfg.lr * (cfg.backbone_lr_mult if module_name.startswith("backbone.") else 1.0)
            if isinstance(module, NORM_TYPES):
                wd = cfg.weight_decay_norm
            elif isinstance(module, nn.Embedding):
                wd = cfg.weight_decay_embed
            else:
                wd = cfg.weight_decay
            groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)


def milestones(cfg: TrainConfig) -> list[int]:
    """The step schedule's milestones in iterations of `cfg.max_iter` (a stage's length); steps and
    fractions are never both set (checked at load time, in pipeline/config/checks.py)."""
    if cfg.step_fractions:
        return [round(f * cfg.max_iter) for f in cfg.step_fractions]
    return list(cfg.steps)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at `step` (0-based, counted from the stage's start)."""
    warm = 1.0
    if cfg.warmup_iters > 0 and step < cfg.warmup_iters:
        warm = 0.001 + (1 - 0.001) * step / cfg.warmup_iters
    if cfg.schedule == "poly":
        decay = (1 - min(step, cfg.max_iter) / max(cfg.max_iter, 1)) ** 0.9
    else:
        decay = cfg.gamma ** sum(step >= s for s in milestones(cfg))
    return warm * decay


def stage_schedule(cfg: TrainConfig, start: int, end: int) -> TrainConfig:
    """The schedule of the stage [start, end) of a run: its length as `max_iter`, and the absolute
    `steps` that fall inside it counted from its start (fractions apply to the length as they are).

    Each stage restarts the schedule with a fresh optimiser (as Guided Distillation's teacher and
    student runs each have a whole Mask2Former schedule), so milestones before `start` do not carry over."""
    if not 0 <= start < end:
        raise ValueError(f"a training stage needs 0 <= start < end, got [{start}, {end})")
    steps = [s - start for s in cfg.steps if start <= s < end]
    return dataclasses.replace(cfg, max_iter=end - start, steps=steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    milestones(cfg)  # fail at build time, not at the first decayed step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


def base_lr(scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: TrainConfig) -> float:
    """The learning rate the next optimiser step uses, as `cfg.lr` x the schedule's factor (every
    group shares the factor; the groups' own rates differ by the backbone multiplier)."""
    return cfg.lr * scheduler.get_last_lr()[0] / scheduler.base_lrs[0]
