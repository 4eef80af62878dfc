"""Geometric transforms of a `Sample`: parameters drawn once, applied to every spatial field.

Each transform is a callable `t(sample, generator=None) -> Sample`; random draws come from
`torch` (seeded per DataLoader worker), optionally from an explicit `torch.Generator`.
Flips are exact (`torch.flip` of every map); resizes, crops and pads go through
`resample.resample_sample`, which maps each field at its own resolution. A sample carrying a
field the transforms do not know raises (`sample.check_fields`). A sample from a flip_views
cache carries the mirrored image's maps too: `HFlip` uses them as they are when it flips (they
are the maps of the flipped image) and drops them either way, `DropFlipView` drops them, and
every other transform refuses them, so one of those two comes first.

Pipelines (`build_train_transforms`, `build_test_transforms`) end with depth at the image's
resolution and features at `feature_stride` of it, so a batch stacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional

import torch
from dgseg.pipeline.data.resample import resample_map, resample_sample
from dgseg.pipeline.data.sample import Sample, check_sample, has_flip_view, refuse_flip_view

Transform = Callable[..., Sample]


def _uniform(low: float, high: float, generator: Optional[torch.Generator]) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


class Compose:
    """Apply transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        for t in self.transforms:
            sample = t(sample, generator=generator)
        return sample


class HFlip:
    """Mirror left-right with probability `p`: every map flipped exactly along its width, or replaced by
    the mirrored image's own maps where the sample carries them; those are dropped either way."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        check_sample(sample)
        if _uniform(0, 1, generator) >= self.p:
            return drop_flip_view(sample)
        return flip(sample)


def flip(sample: Sample) -> Sample:
    """The horizontal mirror of every spatial field (exact: maps covering the image extent flip with it).

    Depth and features become the mirrored image's maps where the sample carries them (a flip_views
    cache: the estimator run on the mirrored image, as flipping its maps only approximates that)."""
    check_sample(sample)
    if has_flip_view(sample):
        return sample.replace(
            image=sample.image.flip(-1),
            masks=sample.masks.flip(-1),
            valid=sample.valid.flip(-1),
            depth=sample.depth_flip,
            features=dict(sample.features_flip or {}),
            depth_flip=None,
            features_flip=None,
        )
    return sample.replace(
        image=sample.image.flip(-1),
        masks=sample.masks.flip(-1),
        valid=sample.valid.flip(-1),
        depth=None if sample.depth is None else sample.depth.flip(-1),
        features={k: v.flip(-1) for k, v in sample.features.items()},
    )


def drop_flip_view(sample: Sample) -> Sample:
    """The sample without the mirrored image's maps (unchanged when it has none)."""
    return sample.replace(depth_flip=None, features_flip=None) if has_flip_view(sample) else sample


class DropFlipView:
    """Keep the image as loaded: drop the mirrored image's maps (pipelines without a random flip)."""

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        check_sample(sample)
        return drop_flip_view(sample)


class LargeScaleJitter:
    """Large-scale jitter onto an `image_size` canvas (Mask2Former's LSJ): square, or (H, W) when
    `image_size` is a pair (Cityscapes' 512 x 1024 crops).

    Draw s in [min_scale, max_scale]; resize so the image fits an (s*H, s*W) box (aspect kept);
    take a random canvas-sized crop where larger, pad bottom/right where smaller (valid False).
    """

    def __init__(self, image_size, min_scale: float, max_scale: float, feature_stride: Optional[int] = None):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.canvas = _canvas(image_size)
        self.min_scale, self.max_scale = min_scale, max_scale
        self.feature_stride = feature_stride

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        h, w = sample.size
        s = _uniform(self.min_scale, self.max_scale, generator)
        ratio = s * min(self.canvas[0] / h, self.canvas[1] / w)  # output pixels per source pixel
        offsets = []
        for n, side in zip((h, w), self.canvas, strict=True):  # integer crop offset where it exceeds the canvas
            room = max(0, math.floor(n * ratio - side))
            offsets.append(int(torch.randint(0, room + 1, (), generator=generator)))
        scale = (1 / ratio, 1 / ratio)
        offset = (offsets[0] / ratio, offsets[1] / ratio)
        return resample_sample(sample, self.canvas, scale, offset, feature_stride=self.feature_stride)


def _canvas(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = (int(v) for v in image_size)
    return (h, w)


class Resize:
    """Resize to a fixed (height, width); each axis maps extent to extent."""

    def __init__(self, height: int, width: int, feature_stride: Optional[int] = None):
        self.height, self.width, self.feature_stride = height, width, feature_stride

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        h, w = sample.size
        scale = (h / self.height, w / self.width)
        canvas = (self.height, self.width)
        return resample_sample(sample, canvas, scale, (0.0, 0.0), self.feature_stride, drop_empty=False)


class ResizeShortSide:
    """Deterministic test-time resize: short side to `size` (aspect kept, sides rounded), the long side
    capped at `max_size` when given (detectron2's ResizeShortestEdge: 800 / 1333 for COCO)."""

    def __init__(self, size: int, feature_stride: Optional[int] = None, max_size: int = 0):
        self.size, self.feature_stride, self.max_size = size, feature_stride, max_size

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        h, w = sample.size
        ratio = self.size / min(h, w)
        if self.max_size > 0:
            ratio = min(ratio, self.max_size / max(h, w))
        out = (max(1, round(h * ratio)), max(1, round(w * ratio)))
        return Resize(*out, feature_stride=self.feature_stride)(sample)


class MatchResolution:
    """Final step: depth to the image's (H, W), features to (ceil(H/s), ceil(W/s)) over [0, s*ceil(H/s)).

    A no-op for maps already there (a preceding resample given `feature_stride`). Assumes the maps
    still cover the image extent, so it must stay last."""

    def __init__(self, feature_stride: int):
        self.feature_stride = feature_stride

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        check_sample(sample)
        refuse_flip_view(sample, "MatchResolution")
        size, s = sample.size, self.feature_stride
        fsize = (math.ceil(size[0] / s), math.ceil(size[1] / s))
        geo = dict(canvas=size, scale=(1.0, 1.0), offset=(0.0, 0.0), src_size=size, mode="bilinear")
        depth = sample.depth
        if depth is not None and tuple(depth.shape[-2:]) != size:
            depth = resample_map(depth, size, size, **geo)
        features = {}
        for name, f in sample.features.items():
            if tuple(f.shape[-2:]) != fsize:
                f = resample_map(f, fsize, (fsize[0] * s, fsize[1] * s), **geo)
            features[name] = f
        return sample.replace(depth=depth, features=features)


def build_train_transforms(
    image_size, min_scale: float, max_scale: float, hflip: bool, feature_stride: int
) -> Compose:
    """Flip (the cached maps, or the cached mirrored view) -> LSJ onto the canvas -> final resolutions.

    `image_size`: the side of a square canvas, or (height, width). The flip must come first: only it
    may consume the mirrored view of a flip_views cache."""
    canvas = _canvas(image_size)
    if any(side % feature_stride for side in canvas):
        raise ValueError(f"training canvas {canvas[0]}x{canvas[1]} must be a multiple of "
                         f"feature_stride {feature_stride}")
    steps: list[Transform] = [HFlip(0.5)] if hflip else [DropFlipView()]
    steps += [LargeScaleJitter(canvas, min_scale, max_scale, feature_stride), MatchResolution(feature_stride)]
    return Compose(steps)


def build_test_transforms(test_size: int, feature_stride: int, max_size: int = 0) -> Compose:
    """Short side to `test_size` (long side at most `max_size` if > 0), maps at their final
    resolutions (collate pads the batch); no mirrored view."""
    resize = ResizeShortSide(test_size, feature_stride, max_size)
    return Compose([DropFlipView(), resize, MatchResolution(feature_stride)])
