"""What every depth source hands to the cache: a depth map plus named multi-scale features.

A source is either a network (`DepthEstimator`, an `nn.Module` taking normalised images) or
something that reads maps from disk (the `files` source). Both return `DepthOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class FeatureInfo:
    """One stored feature level: its name, channels and stride w.r.t. the network input.

    The stride is a float because DPT's finer maps are fractional (path_2 of a patch-14 ViT is
    at 14/4 = 3.5 pixels per cell): a map is `(H / stride, W / stride)` for an input `(H, W)`.
    """

    name: str
    channels: int
    stride: float


@dataclass
class DepthOutput:
    """depth: (B, H, W) relative depth at the network input size;
    features: name -> (B, C, H/stride, W/stride) decoder maps (coarse to fine)."""

    depth: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Preprocess:
    """How images are prepared for a network estimator (the official DAv2 recipe by default)."""

    input_size: int = 518  # short side lower bound
    multiple_of: int = 14  # both sides rounded to this (the ViT patch size)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class DepthEstimator(nn.Module):
    """Base of network estimators. Subclasses set `name`, `feature_info`, `preprocess`."""

    name: str = "abstract"
    feature_info: list[FeatureInfo]
    preprocess: Preprocess

    def forward(self, x: torch.Tensor) -> DepthOutput:  # (B, 3, H, W) normalised
        raise NotImplementedError
