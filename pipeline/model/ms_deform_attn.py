"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021) in plain PyTorch.

Each query attends to a few sampled points per head and per level around its reference point;
the sampled values are bilinearly interpolated with `F.grid_sample`, one call per level. No
compiled extension: it runs wherever PyTorch runs (the CUDA kernel of the reference code is only
faster, not different).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ms_deform_attn_core(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Weighted sum of bilinearly sampled values.

    Args:
        value: (B, S, M, D), the S = sum(h_l * w_l) flattened tokens of all levels, M heads of D channels.
        spatial_shapes: [(h_l, w_l)] per level, in the order the tokens are flattened.
        sampling_locations: (B, Lq, M, L, P, 2) as (x, y) in [0, 1] of each level (outside = zero padding).
        attention_weights: (B, Lq, M, L, P), already normalised over L * P.

    Returns:
        (B, Lq, M * D).
    """
    b, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        # (B, h*w, M, D) -> (B*M, D, h, w)
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * m, d, h, w)
        # (B, Lq, M, P, 2) -> (B*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B*M, D, Lq, L, P) * (B*M, 1, Lq, L, P) summed over levels and points
    stacked = torch.stack(sampled, dim=-2)
    weights = attention_weights.transpose(1, 2).reshape(b * m, 1, lq, n_levels, n_points)
    out = (stacked * weights).flatten(-2).sum(-1)  # (B*M, D, Lq)
    return out.view(b, m * d, lq).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """The attention module: offsets and weights predicted from the query, values from the input.

    Args:
        d_model: channels of queries and values.
        n_levels: feature levels attended.
        n_heads: attention heads (d_model must divide by it).
        n_points: sampled points per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Deformable DETR's init: zero offset weights, the bias spreads each head's points along its
        # own direction at distances 1..P (in units of the level's pixels), so sampling starts spread out.
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: list[tuple[int, int]],
        padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: (B, Lq, C).
            reference_points: (B, Lq, L, 2) as (x, y) in [0, 1] of each level.
            value: (B, S, C), the flattened tokens of all levels.
            spatial_shapes: [(h_l, w_l)] per level.
            padding_mask: (B, S) bool, True on padding tokens: they contribute zero, as samples
                outside the map do, so padding beyond the image changes nothing.

        Returns:
            (B, Lq, C).
        """
        b, lq, _ = query.shape
        s = value.shape[1]
        if sum(h * w for h, w in spatial_shapes) != s:
            raise ValueError(f"spatial_shapes {spatial_shapes} do not add up to {s} value tokens")
        m, n_lvl, n_pts = self.n_heads, self.n_levels, self.n_points
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(b, s, m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(b, lq, m, n_lvl, n_pts, 2)
        weights = self.attention_weights(query).view(b, lq, m, n_lvl * n_pts).softmax(-1)
        weights = weights.view(b, lq, m, n_lvl, n_pts)
        # offsets are in pixels of each level: divide by (w, h) to get fractions of it
        normaliser = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        out = ms_deform_attn_core(v, spatial_shapes, locations, weights)
        return self.output_proj(out)
