"""Mask2Former's pixel decoder (Cheng et al., CVPR 2022, Sec. 4.1 "Pixel decoder").

Backbone levels res3..res5 are projected to `conv_dim` channels, flattened together and refined by
a few multi-scale deformable-attention encoder layers (Deformable DETR) with sine positional
encodings plus a learned embedding per level. An FPN-style lateral + output convolution then
brings the finest refined level down to res2, whose projection gives the per-pixel mask
features at stride 4. The three refined levels feed the masked-attention transformer decoder.

Padding-aware (see `padding.py`): with a padding mask, position encodings are normalised by the
image's extent, reference points are scaled by each level's valid ratio and padding tokens are
masked out of the deformable attention (Deformable DETR), group norms use image statistics, and
the FPN resizes and convolutions read image cells only, so an image's features do not depend on
the other images of its batch.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from dgseg.pipeline.model.ms_deform_attn import MSDeformAttn
from dgseg.pipeline.model.padding import downsample_mask, masked_interpolate, run_masked, valid_ratios, zero_padding
from dgseg.pipeline.model.position_encoding import PositionEmbeddingSine
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups where the channels allow it (fewer otherwise, for tiny test models)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class DeformableEncoderLayer(nn.Module):
    """Post-norm self-attention (deformable, over all levels) + FFN."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor,
                spatial_shapes: list[tuple[int, int]], padding_mask: Optional[Tensor] = None) -> Tensor:
        """src, pos: (B, S, C); reference_points: (B, S, L, 2); padding_mask: (B, S) bool -> (B, S, C)."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        src = self.norm1(src + self.dropout(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


def reference_points(spatial_shapes: list[tuple[int, int]], ratios: Tensor) -> Tensor:
    """Pixel centres of every level as (x, y) in [0, 1] of each level: (B, S, L, 2), the same image
    point seen by each level (Deformable DETR's `get_reference_points`).

    ratios: (B, L, 2) valid (x, y) fraction of each level. A centre is placed relative to the image
    extent of its own level, then onto each level's image extent, so it does not move with padding."""
    points = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        ys = (torch.arange(h, device=ratios.device, dtype=ratios.dtype) + 0.5)[None] / (ratios[:, lvl, 1:2] * h)
        xs = (torch.arange(w, device=ratios.device, dtype=ratios.dtype) + 0.5)[None] / (ratios[:, lvl, 0:1] * w)
        yy = ys[:, :, None].expand(-1, h, w).flatten(1)
        xx = xs[:, None, :].expand(-1, h, w).flatten(1)
        points.append(torch.stack([xx, yy], -1))
    ref = torch.cat(points, 1)  # (B, S, 2)
    return ref[:, :, None, :] * ratios[:, None]


def _fpn_level(lateral: nn.Module, output: nn.Module, feature: Tensor, y: Tensor, y_pad: Optional[Tensor],
               pad: Optional[Tensor]) -> Tensor:
    """One FPN round: the lateral projection of `feature` plus the upsampled coarser map `y`, refined."""
    cur = run_masked(lateral, feature, pad)
    return run_masked(output, cur + masked_interpolate(y, y_pad, cur.shape[-2:]), pad)


class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention pixel decoder.

    Args:
        input_shape: {level name: (channels, stride)} of the backbone, e.g. res2..res5.
        conv_dim: channels of the refined multi-scale features.
        mask_dim: channels of the per-pixel mask features.
        enc_layers: deformable encoder layers.
        nheads: attention heads of the encoder.
        dim_feedforward: FFN width of the encoder.
        transformer_in_features: levels refined by the encoder (the others go through the FPN path).
        n_points: sampled points per head and level.
        common_stride: stride of the mask features.
    """

    def __init__(
        self,
        input_shape: dict[str, tuple[int, int]],
        conv_dim: int = 256,
        mask_dim: int = 256,
        enc_layers: int = 6,
        nheads: int = 8,
        dim_feedforward: int = 1024,
        transformer_in_features: tuple[str, ...] = ("res3", "res4", "res5"),
        n_points: int = 4,
        common_stride: int = 4,
    ) -> None:
        super().__init__()
        for name in transformer_in_features:
            if name not in input_shape:
                raise ValueError(f"pixel decoder needs backbone level {name!r}; got {sorted(input_shape)}")
        by_stride = sorted(input_shape.items(), key=lambda kv: kv[1][1])
        # coarsest first, the order of the encoder's tokens and of the decoder's rounds
        self.trans_features = [k for k, _ in by_stride if k in transformer_in_features][::-1]
        self.fpn_features = [k for k, (_, s) in by_stride if k not in transformer_in_features and s >= common_stride]
        self.fpn_features = self.fpn_features[::-1]  # coarse to fine, each upsampling the previous
        if not self.fpn_features:
            raise ValueError(f"pixel decoder needs a backbone level at stride {common_stride}; got {input_shape}")
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(input_shape[k][0], conv_dim, 1), group_norm(conv_dim)) for k in self.trans_features
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        n_levels = len(self.trans_features)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.level_embed = nn.Parameter(torch.empty(n_levels, conv_dim).normal_())
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(conv_dim, dim_feedforward, n_levels, nheads, n_points) for _ in range(enc_layers)
        )
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for k in self.fpn_features:
            lateral = nn.Sequential(nn.Conv2d(input_shape[k][0], conv_dim, 1, bias=False), group_norm(conv_dim))
            output = nn.Sequential(nn.Conv2d(conv_dim, conv_dim, 3, padding=1, bias=False), group_norm(conv_dim),
                                   nn.ReLU(inplace=True))
            nn.init.kaiming_uniform_(lateral[0].weight, a=1)
            nn.init.kaiming_uniform_(output[0].weight, a=1)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)
        self.num_feature_levels = min(3, n_levels)
        self.common_stride = common_stride
        self.activation_checkpointing = False  # set by build_model (model.activation_checkpointing)

    def forward(self, features: dict[str, Tensor], mask: Optional[Tensor] = None) -> tuple[Tensor, list[Tensor]]:
        """
        Args:
            features: {level: (B, C_l, H/s_l, W/s_l)} from the backbone (after any Depth Fusion).
            mask: (B, H, W) bool, True on padding, or None (no padding).

        Returns:
            mask_features (B, mask_dim, H/4, W/4) and the refined levels coarsest first
            [(B, conv_dim, H/32, W/32), (B, conv_dim, H/16, W/16), (B, conv_dim, H/8, W/8)].
        """
        srcs, pos, shapes, pads = [], [], [], []
        for lvl, (name, proj) in enumerate(zip(self.trans_features, self.input_proj, strict=True)):
            pad = downsample_mask(mask, features[name].shape[-2:])
            x = run_masked(proj, features[name], pad)
            shapes.append((x.shape[-2], x.shape[-1]))
            pads.append(pad)
            srcs.append(x.flatten(2).transpose(1, 2))
            pos.append(self.pe_layer(x, pad).flatten(2).transpose(1, 2) + self.level_embed[lvl].to(x.dtype))
        src = torch.cat(srcs, 1)
        pos_all = torch.cat(pos, 1)
        b = src.shape[0]
        ratios = torch.stack([valid_ratios(p, b, src.device, src.dtype) for p in pads], 1)  # (B, L, 2)
        ref = reference_points(shapes, ratios)
        padding = None if mask is None else torch.cat([p.flatten(1) for p in pads], 1)
        for layer in self.encoder:
            if self.activation_checkpointing and torch.is_grad_enabled():
                # the encoder's attention and FFN activations over every token are recomputed in backward
                src = checkpoint(layer, src, pos_all, ref, shapes, padding, use_reentrant=False)
            else:
                src = layer(src, pos_all, ref, shapes, padding)
        c = src.shape[-1]
        sizes = [h * w for h, w in shapes]
        outs = [zero_padding(t.transpose(1, 2).reshape(b, c, h, w), p)
                for t, (h, w), p in zip(src.split(sizes, 1), shapes, pads, strict=True)]
        y, y_pad = outs[-1], pads[-1]
        for name, lateral, output in zip(self.fpn_features, self.lateral_convs, self.output_convs, strict=True):
            pad = downsample_mask(mask, features[name].shape[-2:])
            if self.activation_checkpointing and torch.is_grad_enabled():
                y = checkpoint(_fpn_level, lateral, output, features[name], y, y_pad, pad, use_reentrant=False)
            else:
                y = _fpn_level(lateral, output, features[name], y, y_pad, pad)
            y_pad = pad
        return self.mask_features(y), outs[: self.num_feature_levels]
