"""The Mask2Former meta-architecture with optional Depth Fusion: the model glue.

images in [0, 1] -> ImageNet normalisation -> backbone (res2..res5) -> Depth Fusion (optional)
-> deformable pixel decoder -> masked-attention transformer decoder -> class and mask logits.

The model computes no loss (see `criterion.py`): teacher and student share this code and the
engine decides what is trained on what.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from dgseg.pipeline.model.backbone import Backbone
from dgseg.pipeline.model.depth_fusion import DepthFusion
from dgseg.pipeline.model.padding import SpatialPaddingHooks, drop_empty
from dgseg.pipeline.model.pixel_decoder import MSDeformAttnPixelDecoder
from dgseg.pipeline.model.transformer_decoder import MaskedTransformerDecoder
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MaskFormer(nn.Module):
    """Backbone + (Depth Fusion) + pixel decoder + transformer decoder.

    Args:
        backbone: res2..res5 feature extractor.
        pixel_decoder: multi-scale pixel decoder.
        transformer_decoder: masked-attention decoder.
        depth_fusion: None = the RGB-only model.
        size_divisibility: inputs are zero-padded (after normalisation) to a multiple of this.
    """

    def __init__(self, backbone: Backbone, pixel_decoder: MSDeformAttnPixelDecoder,
                 transformer_decoder: MaskedTransformerDecoder, depth_fusion: Optional[DepthFusion] = None,
                 size_divisibility: int = 32) -> None:
        super().__init__()
        self.backbone = backbone
        self.depth_fusion = depth_fusion
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.size_divisibility = size_divisibility
        self.mask_stride = pixel_decoder.common_stride  # input pixels per cell of pred_masks
        self.backbone_padding = SpatialPaddingHooks(backbone)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    @property
    def uses_depth(self) -> bool:
        return self.depth_fusion is not None

    def forward(self, images: Tensor, depth_features: Optional[dict[str, Tensor]] = None,
                mask: Optional[Tensor] = None) -> dict:
        """
        Args:
            images: (B, 3, H, W) RGB in [0, 1].
            depth_features: {name: (B, C, h, w)} covering the same extent as the images (needed
                when Depth Fusion is on; ignored otherwise).
            mask: (B, H, W) bool, True on padding (the bottom/right zeros a batch adds to an image
                smaller than the largest), or None = no padding. With it each image's predictions
                are those it gets alone (up to float rounding).

        Returns:
            {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, ceil(H/4), ceil(W/4)) logits,
             "aux_outputs": [{"pred_logits", "pred_masks"}] per earlier decoder layer}.
            Mask cell (i, j) covers input pixels [4i, 4i+4) x [4j, 4j+4).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W); got {tuple(images.shape)}")
        if self.depth_fusion is not None and depth_features is None:
            raise ValueError("this model has Depth Fusion enabled and needs depth_features "
                             f"({sorted(self.depth_fusion.depth_channels)}); got None")
        h, w = images.shape[-2:]
        x = (images - self.pixel_mean) / self.pixel_std
        d = self.size_divisibility
        ph, pw = math.ceil(h / d) * d, math.ceil(w / d) * d
        if mask is not None and tuple(mask.shape) != (images.shape[0], h, w):
            raise ValueError(f"mask must be (B, H, W) = {(images.shape[0], h, w)}; got {tuple(mask.shape)}")
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h))
            # the padding added here is known even when the caller's is not
            base = mask if mask is not None else images.new_zeros((images.shape[0], h, w), dtype=torch.bool)
            mask = F.pad(base, (0, pw - w, 0, ph - h), value=True)
        mask = drop_empty(mask)
        fusion = self.depth_fusion
        if fusion is not None and (ph, pw) != (h, w):
            depth_features = {k: _pad_like(v, (h, w), (ph, pw)) for k, v in depth_features.items()}
        with self.backbone_padding.masked(mask):
            if fusion is not None and fusion.inside_backbone:
                features = self.backbone(x, fuse=lambda level, f: fusion.fuse_level(level, f, depth_features, mask))
            else:
                features = self.backbone(x)
                if fusion is not None:
                    features = fusion(features, depth_features, mask)
        mask_features, multi_scale = self.pixel_decoder(features, mask)
        out = self.transformer_decoder(multi_scale, mask_features, mask)
        mh, mw = math.ceil(h / self.mask_stride), math.ceil(w / self.mask_stride)
        if out["pred_masks"].shape[-2:] != (mh, mw):
            out["pred_masks"] = out["pred_masks"][..., :mh, :mw]
            for aux in out["aux_outputs"]:
                aux["pred_masks"] = aux["pred_masks"][..., :mh, :mw]
        return out


def _pad_like(feature: Tensor, size: tuple[int, int], padded: tuple[int, int]) -> Tensor:
    """Zero-pad a map covering an (H, W) image so that it covers the padded image, at its own resolution."""
    fh, fw = feature.shape[-2:]
    nh = round(fh * padded[0] / size[0])
    nw = round(fw * padded[1] / size[1])
    return F.pad(feature, (0, nw - fw, 0, nh - fh))
