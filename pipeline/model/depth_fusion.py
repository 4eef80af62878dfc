"""Depth Fusion (DF) of "Depth-Guided Semi-Supervised Instance Segmentation" (Chen et al., 2024).

At each chosen backbone level, the depth estimator's features (cached decoder features, or the
depth pyramid of the files source) are resized to that level and fused with a 1x1 convolution:

    F = Conv1x1(concat(resize(F_depth), F_backbone)),  C_d + C_b -> C_b channels.

Initialisation: the conv weight is [0 | I] (zeros over the C_d depth channels, the identity over
the C_b backbone channels) and the bias is 0, so at step 0 the fused output EQUALS F_backbone and
training starts from the backbone's own features. The depth half is not stuck at zero: its weight
gradient is dL/dF * F_depth, non-zero as soon as the depth features are, so the network learns how
much depth to mix in. (A zero weight only blocks the gradient flowing *into* F_depth, which is a
cached input anyway.)

With a padding mask, the resize reads the depth map's image cells only (`masked_interpolate`), so
a level's fused features near the image's edge do not depend on how far the batch pads it.

Where: side by side (default) fuses the backbone's finished outputs, so only the pixel decoder sees
depth; `inside_backbone` fuses each stage's output before the next stage runs, so res3..res5 are
computed from depth-informed maps and their 3x3 convolutions can turn a raw depth map (the `files`
source's one-channel pyramid) into depth edges, which a 1x1 fusion of finished levels cannot.
At step 0 both equal the RGB model (the [0 | I] initialisation).
"""

from __future__ import annotations

from typing import Optional

import torch
from dgseg.pipeline.model.padding import downsample_mask, masked_interpolate
from torch import Tensor, nn


class DepthFusion(nn.Module):
    """Fuse depth features into backbone levels.

    Args:
        sources: {backbone level (res2..res5): depth feature name (path_1..path_4, ...)}.
        backbone_channels: {backbone level: channels}.
        depth_channels: {depth feature name: channels}.
        inside_backbone: fuse each level as the backbone produces it, so the later stages compute on
            the fused map (depth reaches res3..res5 through their convolutions, as in early fusion);
            False = fuse the finished levels side by side (the stages never see depth).
        init: "identity" = depth columns zero (the RGB model at step 0: right when fine-tuning a
            trained RGB model); "open" = depth columns random, N(0, 1/C_d), so depth drives the features
            from step 0 (right from scratch: zero columns grow by about lr per step, and after hundreds
            of AdamW steps at 3e-4 depth still moves the features by a few per cent).
    """

    def __init__(self, sources: dict[str, str], backbone_channels: dict[str, int],
                 depth_channels: dict[str, int], inside_backbone: bool = False, init: str = "identity") -> None:
        super().__init__()
        if init not in ("identity", "open"):
            raise ValueError(f"Depth Fusion init must be 'identity' or 'open' (got {init!r})")
        self.inside_backbone = inside_backbone
        if not sources:
            raise ValueError("Depth Fusion is enabled but has no sources (backbone level -> depth feature)")
        for level, name in sources.items():
            if level not in backbone_channels:
                raise ValueError(f"Depth Fusion source level {level!r} is not a backbone level "
                                 f"({sorted(backbone_channels)})")
            if name not in depth_channels:
                raise ValueError(f"Depth Fusion reads depth feature {name!r} for {level}, but the depth source "
                                 f"provides only {sorted(depth_channels)}")
        self.sources = dict(sources)
        self.depth_channels = {name: depth_channels[name] for name in sources.values()}
        self.fuse = nn.ModuleDict()
        for level, name in sources.items():
            c_d, c_b = depth_channels[name], backbone_channels[level]
            conv = nn.Conv2d(c_d + c_b, c_b, kernel_size=1)
            with torch.no_grad():
                conv.weight.zero_()
                if init == "open":  # unit-variance depth features give each output a unit-variance share
                    conv.weight[:, :c_d].normal_(0.0, c_d ** -0.5)
                conv.weight[:, c_d:, 0, 0] = torch.eye(c_b)
                conv.bias.zero_()
            self.fuse[level] = conv

    def forward(self, features: dict[str, Tensor], depth_features: dict[str, Tensor],
                mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        """
        Args:
            features: {level: (B, C_b, h_l, w_l)} from the backbone.
            depth_features: {name: (B, C_d, h, w)} at any resolution covering the same (padded) extent.
            mask: (B, H, W) bool padding of the input, True on padding, or None.

        Returns:
            a new dict with the chosen levels fused (same shapes), the others passed through.
        """
        out = dict(features)
        for level in self.sources:
            out[level] = self.fuse_level(level, features[level], depth_features, mask)
        return out

    def fuse_level(self, level: str, f_b: Tensor, depth_features: dict[str, Tensor],
                   mask: Optional[Tensor] = None) -> Tensor:
        """Fuse one backbone level: (B, C_b, h, w) -> (B, C_b, h, w); the same map when `level` is not a source.
        `mask`: (B, H, W) padding of the input (True on padding) or None."""
        name = self.sources.get(level)
        if name is None:
            return f_b
        if name not in depth_features:
            raise KeyError(f"Depth Fusion needs depth feature {name!r} for {level}; got {sorted(depth_features)}")
        f_d = depth_features[name]
        if f_d.dim() != 4 or f_d.shape[0] != f_b.shape[0] or f_d.shape[1] != self.depth_channels[name]:
            raise ValueError(f"depth feature {name!r} has shape {tuple(f_d.shape)}; expected "
                             f"({f_b.shape[0]}, {self.depth_channels[name]}, h, w)")
        f_d = masked_interpolate(f_d, downsample_mask(mask, f_d.shape[-2:]), f_b.shape[-2:])
        return self.fuse[level](torch.cat([f_d.to(f_b.dtype), f_b], dim=1))
