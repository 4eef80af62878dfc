"""The one sample type of stage two; it lists every spatial field so transforms can handle them all.

Spatial fields and their geometry (all cover the same scene extent, each at its own resolution):
- `image`    (3, H, W) float32 in [0, 1]; padding 0;
- `masks`    (N, H, W) bool, one per instance; padding False;
- `valid`    (H, W) bool, False on padding;
- `depth`    (1, h, w) float32 relative depth in [0, 1], 1 = nearest, or None; padding 0;
- `features` {name: (C, h, w) float32} cached decoder maps / depth pyramid; padding 0.
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

SPATIAL_FIELDS = ("image", "masks", "valid", "depth", "features")
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
) -> Sample:
    """A checked sample of an untransformed image (valid everywhere, orig_size = image size)."""
    h, w = image.shape[-2:]
    masks = torch.zeros((0, h, w), dtype=torch.bool) if masks is None else masks
    labels = torch.zeros((0,), dtype=torch.int64) if labels is None else labels
    s = Sample(image, masks, labels, torch.ones((h, w), dtype=torch.bool), depth, dict(features or {}), image_id,
               (int(h), int(w)))  # fmt: skip
    check_sample(s)
    return s


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
