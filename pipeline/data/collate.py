"""Stack samples into a `Batch`, padding bottom/right to a common size divisible by 32.

Feature maps come from the transforms at stride s of their image, (C, ceil(H/s), ceil(W/s));
they are padded to (C, H_pad/s, W_pad/s), so every level stays on the padded image's grid
(s must divide the size divisibility). Padding: images/depth/features 0, valid and masks False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn.functional as F
from dgseg.pipeline.data.coco import DataError
from dgseg.pipeline.data.sample import Sample

SIZE_DIVISIBILITY = 32


@dataclass
class Batch:
    """images (B, 3, H, W) in [0, 1]; valid (B, H, W) bool; depth (B, 1, H, W) or None;
    features {name: (B, C, H/s, W/s)}; targets [{"labels": (N,) int64, "masks": (N, H, W) bool}];
    image_ids [str]; orig_sizes [(H0, W0)] of the images on disk."""

    images: torch.Tensor
    valid: torch.Tensor
    depth: Optional[torch.Tensor] = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    targets: list[dict[str, torch.Tensor]] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)
    orig_sizes: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> Batch:
        def move(x: torch.Tensor) -> torch.Tensor:
            return x.to(device, non_blocking=non_blocking)

        return Batch(
            images=move(self.images),
            valid=move(self.valid),
            depth=None if self.depth is None else move(self.depth),
            features={k: move(v) for k, v in self.features.items()},
            targets=[{k: move(v) for k, v in t.items()} for t in self.targets],
            image_ids=list(self.image_ids),
            orig_sizes=list(self.orig_sizes),
        )


def _pad(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pad the last two dims bottom/right to (h, w) with zeros (False for bool)."""
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def feature_stride_of(size: tuple[int, int], fsize: tuple[int, int], divisibility: int) -> int:
    """The stride s (a divisor of `divisibility`) with fsize == ceil(size / s); raises if there is none."""
    for s in range(1, divisibility + 1):
        if divisibility % s == 0 and math.ceil(size[0] / s) == fsize[0] and math.ceil(size[1] / s) == fsize[1]:
            return s
    raise DataError(f"a {fsize} feature map is not at a stride dividing {divisibility} of its {size} image "
                    "(did the transforms end with MatchResolution?)")  # fmt: skip


def collate(
    samples: list[Sample], size_divisibility: int = SIZE_DIVISIBILITY, feature_stride: Optional[int] = None
) -> Batch:
    """Pad and stack samples (see the module docstring); checks that all share depth and feature levels."""
    if not samples:
        raise ValueError("collate: empty list of samples")
    ids = [s.image_id for s in samples]
    if len({s.depth is None for s in samples}) > 1:
        raise DataError(f"collate: some samples have depth and some not (ids {ids})")
    if len({tuple(sorted(s.features)) for s in samples}) > 1:
        raise DataError(f"collate: samples carry different feature levels (ids {ids})")
    div = size_divisibility
    h = math.ceil(max(s.size[0] for s in samples) / div) * div
    w = math.ceil(max(s.size[1] for s in samples) / div) * div
    images = torch.stack([_pad(s.image, h, w) for s in samples])
    valid = torch.stack([_pad(s.valid, h, w) for s in samples])
    depth = None
    if samples[0].depth is not None:
        for s in samples:
            if tuple(s.depth.shape[-2:]) != s.size:
                raise DataError(f"collate: depth of sample {s.image_id} is {tuple(s.depth.shape)}, not at its "
                                f"image's {s.size} (did the transforms end with MatchResolution?)")  # fmt: skip
        depth = torch.stack([_pad(s.depth, h, w) for s in samples])
    features = {}
    for name in samples[0].features:
        maps = []
        for s in samples:
            f = s.features[name]
            stride = feature_stride or feature_stride_of(s.size, tuple(f.shape[-2:]), div)
            expected = (math.ceil(s.size[0] / stride), math.ceil(s.size[1] / stride))
            if div % stride or tuple(f.shape[-2:]) != expected:
                raise DataError(
                    f"collate: feature {name!r} of sample {s.image_id} is {tuple(f.shape)}, not at "
                    f"stride {stride} of its {s.size} image, or {stride} does not divide {div}"
                )
            maps.append(_pad(f, h // stride, w // stride))
        if len({m.shape for m in maps}) > 1:
            raise DataError(f"collate: feature {name!r} has different strides or channels across samples {ids}")
        features[name] = torch.stack(maps)
    targets = [{"labels": s.labels, "masks": _pad(s.masks, h, w)} for s in samples]
    return Batch(images, valid, depth, features, targets, ids, [tuple(s.orig_size) for s in samples])
