"""The one sample type of stage two; it lists every spatial field so transforms can handle them all.

Spatial fields and their geometry (all cover the same scene extent, each at its own resolution):
- `image`    (3, H, W) float32 in [0, 1]; padding 0;
- `masks`    (N, H, W) bool, one per instance; padding False;
- `valid`    (H, W) bool, False on padding;
- `depth`    (1, h, w) float32 relative depth in [0, 1], 1 = nearest, or None; padding 0;
- `features` {name: (C, h, w) float32} cached decoder maps / depth pyramid; padding 0;
- `depth_flip`, `features_flip`: the same maps of the image mirrored left-right, from a cache
  with flip_views (a network is not flip-equivariant, so mirroring `depth` only approximates
  them), or None. `HFlip` (first in a pipeline) swaps them in when it flips and drops them
  either way; every other transform refuses them.
Before the final resolution step, depth and features cover exactly the image's extent at
whatever resolution the cache gave them (e.g. 37x49 for a 480x640 image). After it, depth is
(1, H, W) and each feature map is (C, ceil(H/s), ceil(W/s)) covering the pixels
[0, s*ceil(H/s)) x [0, s*ceil(W/s)) -- i.e. stride s of the padded canvas.
Non-spatial: `labels` (N,) int64 contiguous 0..K-1, `image_id` (str, the cache key),
`orig_size` (H, W) of the image on disk (evaluation resizes predictions to it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

SPATIAL_FIELDS = ("image", "masks", "valid", "depth", "features", "depth_flip", "features_flip")
OTHER_FIELDS = ("labels", "image_id", "orig_size")


@dataclass
class Sample:
    """One image with its instances and its cached depth maps (see the module docstring for shapes)."""

    image: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor
    depth: Optional[torch.Tensor] = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    image_id: str = ""
    orig_size: tuple[int, int] = (0, 0)
    depth_flip: Optional[torch.Tensor] = None
    features_flip: Optional[dict[str, torch.Tensor]] = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image canvas."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def replace(self, **changes) -> Sample:
        check_fields(self)
        return dataclasses.replace(self, **changes)


def new_sample(
    image: torch.Tensor,
    masks: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
    depth: Optional[torch.Tensor] = None,
    features: Optional[dict[str, torch.Tensor]] = None,
    image_id: str = "",
    depth_flip: Optional[torch.Tensor] = None,
    features_flip: Optional[dict[str, torch.Tensor]] = None,
) -> Sample:
    """A checked sample of an untransformed image (valid everywhere, orig_size = image size)."""
    h, w = image.shape[-2:]
    masks = torch.zeros((0, h, w), dtype=torch.bool) if masks is None else masks
    labels = torch.zeros((0,), dtype=torch.int64) if labels is None else labels
    s = Sample(image, masks, labels, torch.ones((h, w), dtype=torch.bool), depth, dict(features or {}), image_id,
               (int(h), int(w)), depth_flip, None if features_flip is None else dict(features_flip))  # fmt: skip
    check_sample(s)
    return s


def has_flip_view(sample: Sample) -> bool:
    """Whether the sample still carries the mirrored image's maps (`depth_flip` / `features_flip`)."""
    return sample.depth_flip is not None or sample.features_flip is not None


def refuse_flip_view(sample: Sample, where: str) -> None:
    """Raise when a transform other than a flip meets the mirrored image's maps: they are only right
    for the image as loaded, so only the first transform (HFlip, or DropFlipView) may consume them."""
    if has_flip_view(sample):
        raise TypeError(
            f"sample {sample.image_id!r}: {where} met the fields ['depth_flip', 'features_flip'] (the mirrored "
            "image's maps from a flip_views cache); HFlip or DropFlipView must come first in the pipeline"
        )


def check_fields(sample: Sample) -> None:
    """Refuse a sample carrying a field no transform knows (an attribute added on the fly or by a subclass):
    passing it through untouched would leave it misaligned with the image."""
    unknown = sorted(set(vars(sample)) - set(SPATIAL_FIELDS) - set(OTHER_FIELDS))
    if unknown:
        raise TypeError(
            f"sample {sample.image_id!r} has unknown field(s) {unknown}; transforms only know "
            f"{SPATIAL_FIELDS + OTHER_FIELDS} and refuse to pass other fields through unaligned"
        )


def check_sample(sample: Sample) -> None:
    """Check fields, shapes and dtypes; raise ValueError/TypeError naming the sample and the field."""
    check_fields(sample)
    name = f"sample {sample.image_id!r}"
    if sample.image.ndim != 3 or sample.image.shape[0] != 3 or not sample.image.is_floating_point():
        raise ValueError(f"{name}: image must be float (3, H, W), got {tuple(sample.image.shape)} {sample.image.dtype}")
    hw = sample.size
    if sample.masks.dtype != torch.bool or sample.masks.ndim != 3 or tuple(sample.masks.shape[1:]) != hw:
        raise ValueError(f"{name}: masks must be bool (N, {hw[0]}, {hw[1]}), got {tuple(sample.masks.shape)}")
    if sample.labels.shape != (sample.masks.shape[0],):
        raise ValueError(f"{name}: labels {tuple(sample.labels.shape)} do not match {sample.masks.shape[0]} masks")
    if sample.valid.dtype != torch.bool or tuple(sample.valid.shape) != hw:
        raise ValueError(f"{name}: valid must be bool {hw}, got {tuple(sample.valid.shape)}")
    if sample.depth is not None and (sample.depth.ndim != 3 or sample.depth.shape[0] != 1):
        raise ValueError(f"{name}: depth must be (1, h, w), got {tuple(sample.depth.shape)}")
    if not isinstance(sample.features, dict):
        raise TypeError(f"{name}: features must be a dict name -> (C, h, w)")
    for key, f in sample.features.items():
        if not isinstance(f, torch.Tensor) or f.ndim != 3:
            raise ValueError(f"{name}: feature {key!r} must be a (C, h, w) tensor, got {getattr(f, 'shape', f)}")
    if has_flip_view(sample):  # the mirrored image's maps: the same maps, shape for shape
        depth_shape = None if sample.depth is None else tuple(sample.depth.shape)
        flip_shape = None if sample.depth_flip is None else tuple(sample.depth_flip.shape)
        if flip_shape != depth_shape:
            raise ValueError(f"{name}: depth_flip {flip_shape} does not match depth {depth_shape}")
        flip = sample.features_flip
        shapes = {k: tuple(v.shape) for k, v in sample.features.items()}
        if not isinstance(flip, dict) or {k: tuple(getattr(v, "shape", ())) for k, v in flip.items()} != shapes:
            raise ValueError(f"{name}: features_flip must hold the feature levels of features, shape for shape")
