"""Mask2Former's pixel decoder (Cheng et al., CVPR 2022, Sec. 4.1 "Pixel decoder").

Backbone levels res3..res5 are projected to `conv_dim` channels, flattened together and refined by
a few multi-scale deformable-attention encoder layers (Deformable DETR) with sine positional
encodings plus a learned embedding per level. An FPN-style lateral + output convolution then
brings the finest refined level down to res2, whose projection gives the per-pixel mask
features at stride 4. The three refined levels feed the masked-attention transformer decoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.ms_deform_attn import MSDeformAttn
from pipeline.model.position_encoding import PositionEmbeddingSine


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
                spatial_shapes: list[tuple[int, int]]) -> Tensor:
        """src, pos: (B, S, C); reference_points: (B, S, L, 2) -> (B, S, C)."""
        src = self.norm1(src + self.dropout(self.self_attn(src + pos, reference_points, src, spatial_shapes)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


def reference_points(spatial_shapes: list[tuple[int, int]], batch: int, device: torch.device,
                     dtype: torch.dtype) -> Tensor:
    """Pixel centres of every level as (x, y) in [0, 1]: (B, S, L, 2), the same point seen by each level."""
    points = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1))
    ref = torch.cat(points, 0)  # (S, 2)
    return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)


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

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """
        Args:
            features: {level: (B, C_l, H/s_l, W/s_l)} from the backbone (after any Depth Fusion).

        Returns:
            mask_features (B, mask_dim, H/4, W/4) and the refined levels coarsest first
            [(B, conv_dim, H/32, W/32), (B, conv_dim, H/16, W/16), (B, conv_dim, H/8, W/8)].
        """
        srcs, pos, shapes = [], [], []
        for lvl, (name, proj) in enumerate(zip(self.trans_features, self.input_proj, strict=True)):
            x = proj(features[name])
            shapes.append((x.shape[-2], x.shape[-1]))
            srcs.append(x.flatten(2).transpose(1, 2))
            pos.append(self.pe_layer(x).flatten(2).transpose(1, 2) + self.level_embed[lvl].to(x.dtype))
        src = torch.cat(srcs, 1)
        pos_all = torch.cat(pos, 1)
        ref = reference_points(shapes, src.shape[0], src.device, src.dtype)
        for layer in self.encoder:
            src = layer(src, pos_all, ref, shapes)
        b, _, c = src.shape
        sizes = [h * w for h, w in shapes]
        outs = [t.transpose(1, 2).reshape(b, c, h, w) for t, (h, w) in zip(src.split(sizes, 1), shapes, strict=True)]
        y = outs[-1]
        for name, lateral, output in zip(self.fpn_features, self.lateral_convs, self.output_convs, strict=True):
            cur = lateral(features[name])
            y = output(cur + F.interpolate(y, size=cur.shape[-2:], mode="bilinear", align_corners=False))
        return self.mask_features(y), outs[: self.num_feature_levels]
