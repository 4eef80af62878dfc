"""Padding-aware building blocks: what lets a batch of differently sized images give each image the
predictions it would get alone.

Images are zero-padded bottom/right to the batch's largest size. Every operation that mixes pixels
must then see the image only: the padding mask is downsampled to each map (a cell is valid when it
holds any image pixel, i.e. cells [0, ceil(h/s)) at stride s), maps are zeroed on padding before
spatial operations (as a convolution's own zero padding would), group norms take their statistics
over valid cells, and resizes are normalised by the resized validity (bilinear over image cells
only, which equals border clamping at the image's edge). With `mask=None` all of these are the
plain operations.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def downsample_mask(mask: Optional[Tensor], size: tuple[int, int]) -> Optional[Tensor]:
    """Padding mask (B, H, W) bool (True = padding) at a map of `size` covering the same canvas.

    Nearest sampling takes each cell's top-left pixel, so a cell is padding only when all of it is."""
    if mask is None:
        return None
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=tuple(size), mode="nearest")[:, 0] > 0.5


def has_padding(mask: Optional[Tensor]) -> bool:
    """Whether a mask is given. The model drops a mask without padding once (`drop_empty`), so the
    helpers need no per-call device sync; an all-False mask gives the plain result, only slower."""
    return mask is not None


def drop_empty(mask: Optional[Tensor]) -> Optional[Tensor]:
    """None for a mask without any padding (one device sync per forward)."""
    return mask if mask is not None and bool(mask.any()) else None


def zero_padding(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """x (B, C, h, w) with padding cells (mask (B, h, w), True = padding) set to 0."""
    if mask is None:
        return x
    return x.masked_fill(mask[:, None], 0.0)


def image_extent(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, 2) width and height, in cells, of the image on a map padded bottom/right; mask: (B, h, w) True on padding."""
    return torch.stack([(~mask[:, 0, :]).sum(1), (~mask[:, :, 0]).sum(1)], -1).to(dtype)


def valid_ratios(mask: Optional[Tensor], batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(B, 2) fraction (x, y) of a map's width and height that the image covers (Deformable DETR's
    `get_valid_ratio`); ones without a mask."""
    if mask is None:
        return torch.ones(batch, 2, device=device, dtype=dtype)
    _, h, w = mask.shape
    extent = image_extent(mask, dtype)
    return torch.stack([extent[:, 0] / w, extent[:, 1] / h], -1)  # no host-to-device copy in the forward


def masked_interpolate(x: Tensor, mask: Optional[Tensor], size: tuple[int, int]) -> Tensor:
    """Bilinear resize of x (B, C, h, w) to `size` that reads image cells only.

    mask: (B, h, w) padding of x, or None. Each output is the bilinear blend of the valid cells it
    touches, renormalised by their weight (0 where it touches none), so values near the image's
    edge do not depend on how much padding follows it."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if not has_padding(mask):
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    valid = (~mask[:, None]).to(x.dtype)
    num = F.interpolate(x * valid, size=tuple(size), mode="bilinear", align_corners=False)
    den = F.interpolate(valid, size=tuple(size), mode="bilinear", align_corners=False)
    return torch.where(den > 1e-6, num / den.clamp_min(1e-6), torch.zeros_like(num))


def masked_group_norm(x: Tensor, norm: nn.GroupNorm, mask: Optional[Tensor]) -> Tensor:
    """`norm(x)` with the statistics taken over valid cells only (mask (B, h, w), True = padding)."""
    if not has_padding(mask):
        return norm(x)
    b, c, h, w = x.shape
    g = norm.num_groups
    xf = x.float().view(b, g, c // g, h * w)
    valid = (~mask).to(xf.dtype).view(b, 1, 1, h * w)
    count = valid.sum(-1, keepdim=True).clamp_min(1.0) * (c // g)
    mean = (xf * valid).sum((-1, -2), keepdim=True) / count
    var = (((xf - mean) * valid) ** 2).sum((-1, -2), keepdim=True) / count
    out = ((xf - mean) * torch.rsqrt(var + norm.eps)).view(b, c, h, w).to(x.dtype)
    if norm.affine:
        out = out * norm.weight.view(1, c, 1, 1) + norm.bias.view(1, c, 1, 1)
    return out


def run_masked(block: nn.Module, x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Run a Sequential of convolutions, group norms and pointwise layers on the image only: padding
    is zeroed before every spatial convolution and at the end, norms use valid statistics."""
    if mask is None:
        return block(x)
    modules = block if isinstance(block, nn.Sequential) else [block]
    for module in modules:
        if isinstance(module, nn.GroupNorm):
            x = masked_group_norm(x, module, mask)
        else:
            if isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1:
                x = zero_padding(x, mask)
            x = module(x)
    return zero_padding(x, mask)


class SpatialPaddingHooks:
    """Zero the padding at the input of every spatial layer of a module (a backbone).

    A convolution wider than 1x1 or a pooling layer at the image's edge otherwise reads the padding,
    which after a normalisation and an activation is no longer zero and depends on how far the
    batch pads; zeroed, it reads what the layer's own zero padding gives the image alone. Installed
    as forward pre-hooks (the module and its weights are untouched); active only inside `masked`.
    """

    def __init__(self, module: nn.Module) -> None:
        self.mask: Optional[Tensor] = None
        self._at: dict[tuple[int, int], Tensor] = {}
        for m in module.modules():
            spatial_conv = isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1
            if spatial_conv or isinstance(m, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
                m.register_forward_pre_hook(self._hook)
        if hasattr(module, "checkpoint_contexts"):  # a checkpointed stage recomputes outside `masked`
            module.checkpoint_contexts = self.checkpoint_contexts

    @contextmanager
    def masked(self, mask: Optional[Tensor]) -> Iterator[None]:
        """Within the block the hooks zero padding (B, H, W), True = padding; nothing when None."""
        self.mask, self._at = (mask if has_padding(mask) else None), {}
        try:
            yield
        finally:
            self.mask, self._at = None, {}

    def checkpoint_contexts(self) -> tuple[AbstractContextManager, AbstractContextManager]:
        """`context_fn` of torch.utils.checkpoint: its recompute in backward zeroes the padding of the forward."""
        return nullcontext(), self._restored(self.mask, dict(self._at))

    @contextmanager
    def _restored(self, mask: Optional[Tensor], at: dict) -> Iterator[None]:
        saved = self.mask, self._at
        self.mask, self._at = mask, at
        try:
            yield
        finally:
            self.mask, self._at = saved

    def _hook(self, module: nn.Module, args: tuple) -> Optional[tuple]:
        if self.mask is None or not args or args[0].dim() != 4:
            return None
        x = args[0]
        size = (x.shape[-2], x.shape[-1])
        if size not in self._at:
            self._at[size] = downsample_mask(self.mask, size)
        return (zero_padding(x, self._at[size]), *args[1:])
