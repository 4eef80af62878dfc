"""DPT head of Depth Anything V2 (Ranftl et al. 2021, "Vision Transformers for Dense Prediction").

Four ViT token maps are reassembled into a 4-level pyramid (1/4, 1/2, 1, 2 times the patch
grid), projected to `features` channels and fused coarse to fine by `FeatureFusionBlock`s.
The fused maps `path_4..path_1` (patch grid x1, x2, x4, x8) are what the depth cache stores.
Module names follow the official checkpoint (`projects`, `resize_layers`, `scratch.layerK_rn`,
`scratch.refinenetK.resConfUnitN`, `scratch.output_conv1/2`). Every upsampling inside the
head is bilinear with `align_corners=True`, as in the official code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convs with bias (the official head has no BatchNorm)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """Adds the skip (after a residual unit), refines, upsamples and applies a 1x1 conv.

    `forward(x (B, F, h, w), skip (B, F, h, w) | None, size)`: upsampled to `size`, or x2
    when `size` is None, -> `(B, F, *size)`.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        # registration order = the official state_dict order
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)  # on the skip; unused (but saved) in refinenet4
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    """Container whose only job is to give the official `scratch.*` key prefix."""

    def __init__(self, out_channels: Sequence[int], features: int, head_hidden: int) -> None:
        super().__init__()
        self.layer1_rn = nn.Conv2d(out_channels[0], features, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(out_channels[1], features, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(out_channels[2], features, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(out_channels[3], features, 3, padding=1, bias=False)
        self.refinenet1 = FeatureFusionBlock(features)
        self.refinenet2 = FeatureFusionBlock(features)
        self.refinenet3 = FeatureFusionBlock(features)
        self.refinenet4 = FeatureFusionBlock(features)
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, head_hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(head_hidden, 1, 1),
            nn.ReLU(),
        )


class DPTHead(nn.Module):
    """Token maps -> (depth, fused maps).

    forward(tokens: 4 x (B, h*w, C), h, w) -> depth `(B, 1, 14h, 14w)` (for patch size 14) and
    `{"path_4": (B, F, h, w), "path_3": (B, F, 2h, 2w), "path_2": (B, F, 4h, 4w),
    "path_1": (B, F, 8h, 8w)}`.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        features: int,
        out_channels: Sequence[int],
        patch_size: int = 14,
        head_hidden: int = 32,
    ) -> None:
        super().__init__()
        if len(out_channels) != 4:
            raise ValueError(f"out_channels must have 4 entries, got {list(out_channels)}")
        self.patch_size = patch_size
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),
            ]
        )
        self.scratch = Scratch(out_channels, features, head_hidden)

    def forward(
        self, tokens: Sequence[torch.Tensor], patch_h: int, patch_w: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        layers = []
        for i, t in enumerate(tokens):
            x = t.transpose(1, 2).reshape(t.shape[0], t.shape[-1], patch_h, patch_w)
            layers.append(self.resize_layers[i](self.projects[i](x)))
        s = self.scratch
        l1, l2, l3, l4 = s.layer1_rn(layers[0]), s.layer2_rn(layers[1]), s.layer3_rn(layers[2]), s.layer4_rn(layers[3])
        path_4 = s.refinenet4(l4, size=l3.shape[2:])
        path_3 = s.refinenet3(path_4, l3, size=l2.shape[2:])
        path_2 = s.refinenet2(path_3, l2, size=l1.shape[2:])
        path_1 = s.refinenet1(path_2, l1)
        out = s.output_conv1(path_1)
        out = F.interpolate(
            out, size=(patch_h * self.patch_size, patch_w * self.patch_size), mode="bilinear", align_corners=True
        )
        depth = s.output_conv2(out)
        return depth, {"path_4": path_4, "path_3": path_3, "path_2": path_2, "path_1": path_1}
