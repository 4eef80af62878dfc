"""The Depth Controller: the weight of the depth pseudo-labels in the unsupervised loss.

The paper (Chen et al. 2024) says only that the Depth Controller "adaptively adjusts the depth
map", "enhances convergence speed" and "dynamically balances the loss weights between RGB and
depth maps"; its formula is not published. This is our design.

The teacher predicts on the RGB view and on the depth view of each unlabelled image, giving two
pseudo-label sets; the student's unsupervised loss against them is (`losses.combine_unsup_losses`)

    L_unsup = unsup_weight * ((1 - w) * L_rgb + w * L_depth),      w in [w_min, w_max].

**Measured each step** (the `stats` of `update`, made by `measure_step` + `finish_measurements`):
`agreement` a, the F-measure of the IoU (and, if `agreement_class_aware`, class) matching between
the two sets over the images where both are non-empty (`agreement.agreement_counts`); `loss_rgb`
and `loss_depth`, the student's *matched mask* losses (BCE + dice of the last layer, per pseudo-label
mask) against each set, None for a set with no mask in the batch. The classification term is left
out: against an empty set it is only "no object" on every query, small and easy, which read as "the
student fits the depth set well" and pushed w up while the depth teacher found nothing. Under
several processes the counts and losses are summed over processes first (`reduce_measurements`),
so every rank takes the same w. Each is smoothed
by a bias-corrected EMA with `momentum` m (x̄_n = EMA_n / (1 - m^n) over the n steps where it was
measured; a missing or non-finite value leaves it unchanged).

**The rule.** With u0 = (w_init - w_min) / (w_max - w_min) and σ the logistic function,

    z = logit(u0) - β (ā - a_ref) + γ log(L̄_rgb / L̄_depth)
    w = w_min + (w_max - w_min) σ(z)

(a term is left out until its statistics have been measured; so before any measurement w = w_init).

**Why.**
- *Warm start that leans on depth (convergence speed).* Early in stage B the RGB teacher is weak
  and its masks follow colour, not objects, while the depth view already separates instances by
  their distance (on depth-separable scenes a depth-only segmenter is far ahead of an RGB one).
  Early agreement is low, so the first term pushes w above w_init towards the depth set.
- *Hand-over to RGB as agreement rises.* When the two teachers agree, the depth set has little
  left to teach, while the RGB set also covers what depth cannot see (flat objects on a surface,
  reflections, touching objects at one distance, cf. the paper's Fig. 1). So w falls as ā rises;
  `a_ref` is the agreement at which this term is neutral, β its gain.
- *Balancing by reliability.* With β = 0 and γ = 1, w / (1 - w) = (u0 / (1 - u0)) · L̄_rgb / L̄_depth:
  inverse-loss weighting, which equalises the two weighted terms, w L̄_depth : (1 - w) L̄_rgb =
  u0 : (1 - u0). A set the student keeps failing to fit is inconsistent with what it learns from
  the labels and the other set (noisy depth on a mirror, RGB masks split by texture), so its
  weight drops. Caveat: a larger w also fits the depth set better, which lowers L̄_depth
  (a positive feedback); the EMA's slowness, the bounds and the agreement term keep it in check,
  and γ < 1 damps it (γ = 0 turns it off).
- Bounded in [w_min, w_max] by construction; monotone decreasing in ā (β > 0) and increasing in
  L̄_rgb / L̄_depth (γ > 0).

`ConstantController` (w = w_init) and `ScheduledController` (a cosine ramp from w_init to
`final_weight` over `schedule_iters`, ignoring the statistics) are the ablations. Every controller
has `update(step, stats) -> w`, a `weight` property, and `state_dict()`/`load_state_dict()` of
JSON-able values, saved in checkpoints so a resumed run continues with identical weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

import torch
from dgseg.pipeline.config import ControllerConfig
from dgseg.pipeline.semi.agreement import agreement_counts
from torch import Tensor

Stat = Union[float, Tensor, None]
STAT_NAMES = ("agreement", "loss_rgb", "loss_depth")


class DepthController:
    """Base: a weight for the depth pseudo-label loss, updated once per step."""

    kind = "base"

    def __init__(self, init_weight: float, min_weight: float = 0.0, max_weight: float = 1.0) -> None:
        if not 0.0 <= min_weight <= init_weight <= max_weight <= 1.0:
            raise ValueError(
                f"Depth Controller weights need 0 <= min_weight <= init_weight <= max_weight <= 1, "
                f"got min {min_weight}, init {init_weight}, max {max_weight}"
            )
        self.init_weight, self.min_weight, self.max_weight = init_weight, min_weight, max_weight
        self._weight = float(init_weight)
        self._step = -1

    @property
    def weight(self) -> float:
        """The weight returned by the last `update` (init_weight before the first)."""
        return self._weight

    def update(self, step: int, stats: Optional[Mapping[str, Stat]] = None) -> float:
        """Take this step's measurements (keys in STAT_NAMES; None = not measured); return w."""
        clean = _check_stats(stats)
        self._step = int(step)
        self._weight = float(self._compute(self._step, clean))
        return self._weight

    def _compute(self, step: int, stats: dict[str, float]) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self._step, "weight": self._weight}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"controller state is for kind {state.get('kind')!r}, this controller is {self.kind!r}")
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise ValueError(f"{self.kind} controller state lacks {missing}")
        self._step = int(state["step"])
        self._weight = float(state["weight"])


class ConstantController(DepthController):
    """w = init_weight at every step (ablation)."""

    kind = "constant"

    def _compute(self, step: int, stats: dict[str, float]) -> float:
        return self.init_weight


class ScheduledController(DepthController):
    """Cosine ramp from init_weight (step 0) to final_weight (step >= schedule_iters); ignores stats."""

    kind = "scheduled"

    def __init__(self, init_weight: float, final_weight: float, schedule_iters: int) -> None:
        lo, hi = min(init_weight, final_weight), max(init_weight, final_weight)
        super().__init__(init_weight, lo, hi)
        if schedule_iters < 0:
            raise ValueError(f"schedule_iters must be >= 0, got {schedule_iters}")
        self.final_weight, self.schedule_iters = final_weight, schedule_iters

    def _compute(self, step: int, stats: dict[str, float]) -> float:
        if self.schedule_iters == 0 or step >= self.schedule_iters:
            return self.final_weight
        t = max(step, 0) / self.schedule_iters
        return self.final_weight + (self.init_weight - self.final_weight) * 0.5 * (1.0 + math.cos(math.pi * t))


class AdaptiveController(DepthController):
    """The Depth Controller of the module docstring: w from running agreement and loss ratio."""

    kind = "adaptive"

    def __init__(
        self,
        init_weight: float = 0.5,
        min_weight: float = 0.0,
        max_weight: float = 1.0,
        momentum: float = 0.99,
        agreement_gain: float = 4.0,
        agreement_ref: float = 0.5,
        loss_gain: float = 1.0,
    ) -> None:
        super().__init__(init_weight, min_weight, max_weight)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"controller momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.agreement_gain, self.agreement_ref, self.loss_gain = agreement_gain, agreement_ref, loss_gain
        self._ema = {name: 0.0 for name in STAT_NAMES}
        self._count = {name: 0 for name in STAT_NAMES}

    def running(self, name: str) -> Optional[float]:
        """The bias-corrected running mean of a statistic, None before its first measurement."""
        n = self._count[name]
        return None if n == 0 else self._ema[name] / (1.0 - self.momentum**n)

    def _compute(self, step: int, stats: dict[str, float]) -> float:
        for name, value in stats.items():
            self._ema[name] = self.momentum * self._ema[name] + (1.0 - self.momentum) * value
            self._count[name] += 1
        span = self.max_weight - self.min_weight
        if span == 0.0:
            return self.min_weight
        u0 = min(max((self.init_weight - self.min_weight) / span, 1e-6), 1.0 - 1e-6)
        z = math.log(u0 / (1.0 - u0))
        agreement = self.running("agreement")
        if agreement is not None:
            z -= self.agreement_gain * (agreement - self.agreement_ref)
        loss_rgb, loss_depth = self.running("loss_rgb"), self.running("loss_depth")
        if loss_rgb is not None and loss_depth is not None:
            eps = 1e-8
            z += self.loss_gain * math.log((max(loss_rgb, 0.0) + eps) / (max(loss_depth, 0.0) + eps))
        return self.min_weight + span / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for name in STAT_NAMES:
            state[f"{name}_ema"] = self._ema[name]
            state[f"{name}_count"] = self._count[name]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        for name in STAT_NAMES:
            self._ema[name] = float(state[f"{name}_ema"])
            self._count[name] = int(state[f"{name}_count"])


def _check_stats(stats: Optional[Mapping[str, Stat]]) -> dict[str, float]:
    """Known keys only (a typo must not silently switch a term off); drop None and non-finite values."""
    if stats is None:
        return {}
    unknown = sorted(set(stats) - set(STAT_NAMES))
    if unknown:
        raise ValueError(f"unknown Depth Controller statistic(s) {unknown}; expected some of {list(STAT_NAMES)}")
    clean = {}
    for name, value in stats.items():
        if value is None:
            continue
        v = float(value.detach().item()) if isinstance(value, Tensor) else float(value)
        if math.isfinite(v):
            clean[name] = v
    return clean


MASK_TERMS = ("loss_mask", "loss_dice")


def measure_step(
    rgb_sets: Sequence[Mapping[str, Tensor]],
    depth_sets: Sequence[Mapping[str, Tensor]],
    loss_rgb: Mapping[str, Tensor],
    loss_depth: Mapping[str, Tensor],
    *,
    iou_threshold: float = 0.5,
    class_aware: bool = True,
) -> dict[str, float]:
    """This process's raw measurements: sums and counts that add up over processes.

    `loss_*` are `SetCriterion` dicts; their mask terms are means over the pseudo-label masks (the
    criterion divides by the masks of all processes, so the per-process values sum to the mean of
    the whole batch once divided by the number of processes)."""
    matches, compared = agreement_counts(rgb_sets, depth_sets, iou_threshold=iou_threshold, class_aware=class_aware)
    out = {"matches": float(matches), "compared": float(compared)}
    for name, sets, losses in (("rgb", rgb_sets, loss_rgb), ("depth", depth_sets, loss_depth)):
        out[f"n_{name}"] = float(sum(len(s["labels"]) for s in sets))
        with torch.no_grad():
            out[f"loss_{name}"] = float(sum(losses[k].detach().float() for k in MASK_TERMS if k in losses))
    return out


def reduce_measurements(raw: dict[str, float], all_reduce_sum: Optional[Callable] = None,
                        world_size: int = 1) -> dict[str, float]:
    """Sum the raw measurements over processes (`all_reduce_sum(dict) -> dict`, None = one process)."""
    if all_reduce_sum is None or world_size == 1:
        return dict(raw)
    total = all_reduce_sum(raw)
    for name in ("loss_rgb", "loss_depth"):
        total[name] /= world_size
    return total


def finish_measurements(raw: Mapping[str, float]) -> dict[str, Optional[float]]:
    """The controller's `stats` from (reduced) raw measurements; None where nothing was measured."""
    return {
        "agreement": 2.0 * raw["matches"] / raw["compared"] if raw["compared"] > 0 else None,
        "loss_rgb": raw["loss_rgb"] if raw["n_rgb"] > 0 else None,
        "loss_depth": raw["loss_depth"] if raw["n_depth"] > 0 else None,
    }


def build_controller(cfg: ControllerConfig) -> DepthController:
    """The controller named by `cfg.kind` (a plain dict of builders)."""
    builders = {
        "adaptive": lambda: AdaptiveController(
            init_weight=cfg.init_weight,
            min_weight=cfg.min_weight,
            max_weight=cfg.max_weight,
            momentum=cfg.momentum,
            agreement_gain=cfg.agreement_gain,
            agreement_ref=cfg.agreement_ref,
            loss_gain=cfg.loss_gain,
        ),
        "constant": lambda: ConstantController(cfg.init_weight, cfg.min_weight, cfg.max_weight),
        "scheduled": lambda: ScheduledController(cfg.init_weight, cfg.final_weight, cfg.schedule_iters),
    }
    if cfg.kind not in builders:
        raise ValueError(f"unknown Depth Controller kind {cfg.kind!r}; choose one of {sorted(builders)}")
    return builders[cfg.kind]()
