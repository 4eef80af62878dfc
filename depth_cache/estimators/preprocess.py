"""The official Depth Anything V2 image preparation, on tensors (batched, any device).

Official `infer_image`: RGB / 255, aspect-keeping resize with the "lower_bound" rule to sides
that are multiples of 14 (cv2 bicubic on the float image), ImageNet normalisation; the network's
depth is resized back bilinearly with `align_corners=True`. `F.interpolate(mode="bicubic",
align_corners=False, antialias=False)` on the float image matches cv2's INTER_CUBIC to ~3e-5
of the output depth's std (measured, see the fixture README); resizing uint8 or with PIL does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from dgseg.depth_cache.estimators.base import Preprocess


@dataclass(frozen=True)
class ResizeGeometry:
    """How a batch of images (all of one size) was resized for the network."""

    orig_size: tuple[int, int]  # (h, w) of the images given
    size: tuple[int, int]  # (H, W) fed to the network


def target_size(h: int, w: int, input_size: int = 518, multiple_of: int = 14) -> tuple[int, int]:
    """Network input size for an `h x w` image: the official "lower_bound" rule.

    scale = max(input_size / h, input_size / w); each side becomes round-half-even(scale * side /
    multiple_of) * multiple_of, or the ceil of it where rounding fell below `input_size`.
    E.g. (480, 640) -> (518, 686); (1080, 1920) -> (518, 924).
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    scale = max(input_size / h, input_size / w)

    def side(length: int) -> int:
        x = scale * length
        y = round(x / multiple_of) * multiple_of  # Python's round is half-to-even, like np.round
        if y < input_size:
            y = math.ceil(x / multiple_of) * multiple_of
        return int(y)

    return side(h), side(w)


def preprocess_images(images: torch.Tensor, pre: Preprocess) -> tuple[torch.Tensor, ResizeGeometry]:
    """RGB image(s) -> normalised network input.

    images: `(B, 3, h, w)` or `(3, h, w)`, uint8 in [0, 255] or floating point in [0, 1].
    Returns `(B, 3, H, W)` float32 (H, W from `target_size`) and the geometry.
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (B, 3, h, w) or (3, h, w), got shape {tuple(images.shape)}")
    if not (images.dtype == torch.uint8 or images.is_floating_point()):
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    h, w = images.shape[-2:]
    size = target_size(h, w, pre.input_size, pre.multiple_of)
    return prepare_batch(images, size, pre), ResizeGeometry(orig_size=(int(h), int(w)), size=size)


def prepare_batch(images: torch.Tensor, size: tuple[int, int], pre: Preprocess) -> torch.Tensor:
    """`(B, 3, h, w)` uint8 (or float in [0, 1]) on any device -> `(B, 3, *size)` normalised float32.

    The official numerics (/255 in float32, bicubic on the float image, ImageNet normalisation), run
    where the images are: the precompute job calls it on the estimator's device, batched per original
    size. Batching changes nothing (each image is interpolated alone; tests/depth_cache/test_decode.py).
    On a GPU, CUDA's bicubic kernel may round differently from the CPU's in float32 (not yet measured
    on a GPU); the depth-cache tests check the CPU path against the official pipeline."""
    if images.dtype == torch.uint8:
        x = images.to(torch.float32).div_(255.0)  # in place on the fresh copy: one full-size buffer, not two
    else:
        x = images.float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=False)
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def postprocess_depth(depth: torch.Tensor, orig_size: tuple[int, int]) -> torch.Tensor:
    """Network depth `(B, H, W)` -> `(B, h, w)` at the original size (bilinear, align_corners=True)."""
    if tuple(depth.shape[-2:]) == tuple(orig_size):
        return depth
    return F.interpolate(depth.unsqueeze(1), size=tuple(orig_size), mode="bilinear", align_corners=True).squeeze(1)
