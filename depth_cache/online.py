"""Depth computed inside a training step (stage two's `online` mode), shaped like cache entries.

`OnlineDepth(estimator)(images)` runs the network on a batch and returns one `CacheEntry` per
image with the reader's conventions: depth normalised per image ([0, 1], 1 = nearest) at the
network input / `depth_stride`, features at their own resolution, every map covering exactly
the image. The network input is the official size for the batch's (H, W) (no storage canvas).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dgseg.depth_cache.entry import CacheEntry, normalise_depth, pool_to_stride
from dgseg.depth_cache.estimators.base import DepthEstimator
from dgseg.depth_cache.runner import prepare_images, resolve_precision, run_network


class OnlineDepth:
    """`__call__(images (B, 3, H, W) in [0, 1], valid (B, H, W) bool | None) -> list[CacheEntry]`.

    `valid` marks real pixels of padded batches: the normalisation's percentiles ignore padding."""

    def __init__(self, estimator: DepthEstimator, depth_stride: int = 4, precision: str = "auto"):
        if not isinstance(estimator, DepthEstimator):
            raise TypeError(
                f"online depth needs a network estimator, got {type(estimator).__name__} "
                "(the `files` source only serves precomputed caches)"
            )
        self.estimator, self.depth_stride, self.precision = estimator.eval(), depth_stride, precision

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> list[CacheEntry]:
        from dgseg.depth_cache.estimators.preprocess import target_size

        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        device = next(self.estimator.parameters()).device
        pre = self.estimator.preprocess
        h, w = images.shape[-2:]
        frame = target_size(h, w, pre.input_size, pre.multiple_of)
        x = prepare_images(images.to(device), frame, self.estimator)
        depth, feats = run_network(self.estimator, x, resolve_precision(self.precision, device))
        mask = None
        if valid is not None:
            mask = F.interpolate(valid[:, None].float().to(device), size=frame, mode="nearest")[:, 0] > 0.5
        depth = pool_to_stride(normalise_depth(depth, mask), self.depth_stride)
        return [
            CacheEntry(depth=depth[i : i + 1], features={k: v[i] for k, v in feats.items()}, orig_size=(int(h), int(w)))
            for i in range(images.shape[0])
        ]
