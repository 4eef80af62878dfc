"""The unsupervised part of the student's loss, from its losses against the two pseudo-label sets.

    L_unsup = unsup_weight * ((1 - w) * L_rgb + w * L_depth)

where L_rgb / L_depth are `SetCriterion` dicts (already weighted per term) of the student's
outputs against the RGB-view and depth-view pseudo-labels, and w comes from the Depth Controller.
Without a depth set (the RGB-only teacher-student rows) w is ignored: L_unsup = unsup_weight * L_rgb.
The result keeps every term apart (for logging); the trainer's total is `sum(result.values())`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from torch import Tensor


def combine_unsup_losses(
    loss_rgb: Mapping[str, Tensor],
    loss_depth: Optional[Mapping[str, Tensor]],
    weight: float,
    unsup_weight: float,
) -> dict[str, Tensor]:
    """Weight and rename the terms: `{name}_unsup_rgb` and `{name}_unsup_depth` -> scalar tensors.

    Args:
        loss_rgb: {loss name: scalar} against the RGB pseudo-labels.
        loss_depth: the same against the depth pseudo-labels, or None (RGB-only).
        weight: the Depth Controller's w in [0, 1].
        unsup_weight: the unsupervised loss weight (2.0 in Guided Distillation).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"Depth Controller weight must be in [0, 1], got {weight}")
    if loss_depth is None:
        return {f"{name}_unsup_rgb": unsup_weight * v for name, v in loss_rgb.items()}
    out = {f"{name}_unsup_rgb": (unsup_weight * (1.0 - weight)) * v for name, v in loss_rgb.items()}
    out.update({f"{name}_unsup_depth": (unsup_weight * weight) * v for name, v in loss_depth.items()})
    return out


def loss_value(losses: Mapping[str, Tensor]) -> Optional[float]:
    """The detached sum of a loss dict as a float (the controller's `loss_rgb`/`loss_depth`); None if empty."""
    if not losses:
        return None
    with torch.no_grad():
        return float(sum(v.detach().float() for v in losses.values()))
