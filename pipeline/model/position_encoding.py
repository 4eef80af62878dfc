"""Sine positional encoding of a feature map (DETR, Carion et al. 2020), shared by both decoders.

With a padding mask the positions are normalised by the image's own (valid) extent, as DETR's
`PositionEmbeddingSine` does, so a pixel's encoding does not depend on how far the batch pads.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine encoding of normalised (y, x) positions.

    Args:
        num_pos_feats: channels per axis; the output has 2 * num_pos_feats channels.
        temperature: wavelength base.
    """

    def __init__(self, num_pos_feats: int = 64, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = 2 * math.pi

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """x: (B, C, H, W) (only its shape, dtype and device are used); mask: (B, H, W) bool, True on
        padding, or None (no padding) -> (B, 2 * num_pos_feats, H, W)."""
        b, _, h, w = x.shape
        eps = 1e-6
        if mask is None:
            not_mask = torch.ones(1, h, w, device=x.device, dtype=torch.float32)
        else:
            not_mask = (~mask).to(torch.float32)
        # cumulative counts of valid pixels: 1..h_valid along each axis, normalised by the last one
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
        return pos.expand(b, -1, -1, -1).to(x.dtype)
