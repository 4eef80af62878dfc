"""Mask2Former's masked-attention transformer decoder (Cheng et al., CVPR 2022, Sec. 3.2).

Learned queries attend, layer after layer, to one pixel-decoder level in round-robin order
(coarsest first). Each cross-attention is *masked*: a query only sees the pixels inside the mask
it predicted after the previous layer (sigmoid >= 0.5 at that level's resolution). Predictions
(class logits over K classes + "no object", mask logits) come after every layer, which gives the
deep supervision of the criterion.

With a padding mask, no query attends to padding (it is added to every attention mask), position
encodings follow the image's extent, and the attention masks are resized from the image cells of
the predicted masks only, so predictions do not depend on how far the batch pads an image.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from dgseg.pipeline.model.padding import downsample_mask, zero_padding
from dgseg.pipeline.model.position_encoding import PositionEmbeddingSine
from dgseg.pipeline.model.roi_classifier import MaskRoIClassifier
from torch import Tensor, nn


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, normalize_before: bool = False) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before

    def forward(self, tgt: Tensor, query_pos: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        """tgt, query_pos: (Q, B, C) -> (Q, B, C); attn_mask: (Q, Q) bool, True = blocked."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = x + query_pos
        out = tgt + self.attn(q, k, value=x, attn_mask=attn_mask, need_weights=False)[0]
        return out if self.normalize_before else self.norm(out)


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, normalize_before: bool = False) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before

    def forward(self, tgt: Tensor, memory: Tensor, attn_mask: Optional[Tensor], pos: Tensor,
                query_pos: Tensor) -> Tensor:
        """tgt, query_pos: (Q, B, C); memory, pos: (HW, B, C); attn_mask: (B*nhead, Q, HW) bool, True = blocked."""
        x = self.norm(tgt) if self.normalize_before else tgt
        out = tgt + self.attn(x + query_pos, memory + pos, value=memory, attn_mask=attn_mask, need_weights=False)[0]
        return out if self.normalize_before else self.norm(out)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, normalize_before: bool = False) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before

    def forward(self, tgt: Tensor) -> Tensor:
        x = self.norm(tgt) if self.normalize_before else tgt
        out = tgt + self.linear2(F.relu(self.linear1(x)))
        return out if self.normalize_before else self.norm(out)


class MLP(nn.Module):
    """Linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskedTransformerDecoder(nn.Module):
    """Queries -> class logits and mask logits, with masked cross-attention.

    Args:
        in_channels: channels of the pixel decoder's multi-scale features.
        num_classes: K (the class head predicts K + 1, the last being "no object").
        hidden_dim: query width.
        num_queries: Q.
        nheads: attention heads.
        dim_feedforward: FFN width.
        dec_layers: decoder layers (each does cross-attention, self-attention, FFN).
        pre_norm: LayerNorm before (True) or after (False, Mask2Former's default) each block.
        mask_dim: channels of the mask features (the mask embedding's width).
        num_feature_levels: pixel-decoder levels visited round-robin.
        roi_classifier: None, or a `MaskRoIClassifier` whose logits (from each query's mask region)
            are added to the query head's after every layer.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        pre_norm: bool = False,
        mask_dim: int = 256,
        num_feature_levels: int = 3,
        roi_classifier: Optional[MaskRoIClassifier] = None,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_feature_levels = num_feature_levels
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.self_attn = nn.ModuleList(SelfAttentionLayer(hidden_dim, nheads, pre_norm) for _ in range(dec_layers))
        self.cross_attn = nn.ModuleList(CrossAttentionLayer(hidden_dim, nheads, pre_norm) for _ in range(dec_layers))
        self.ffn = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward, pre_norm) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim:
                conv = nn.Conv2d(in_channels, hidden_dim, 1)
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Identity())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.roi_classifier = roi_classifier
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        for module in (*self.self_attn, *self.cross_attn, *self.ffn):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def forward(self, features: list[Tensor], mask_features: Tensor, mask: Optional[Tensor] = None) -> dict:
        """
        Args:
            features: pixel-decoder levels, coarsest first, each (B, C, h_l, w_l).
            mask_features: (B, mask_dim, H/4, W/4).
            mask: (B, H, W) bool, True on padding, or None (no padding).

        Returns:
            {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, H/4, W/4),
             "aux_outputs": [{"pred_logits", "pred_masks"}] * dec_layers} (before each layer, first = the
            queries before any attention).
        """
        if len(features) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(features)}")
        src, pos, pads = [], [], []
        for i, x in enumerate(features):
            pad = downsample_mask(mask, x.shape[-2:])
            pads.append(pad)
            pos.append(self.pe_layer(x, pad).flatten(2).permute(2, 0, 1))  # (HW, B, C)
            src.append((self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]).permute(2, 0, 1))
        b = mask_features.shape[0]
        mask_pad = downsample_mask(mask, mask_features.shape[-2:])
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, b, 1)  # (Q, B, C)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, b, 1)
        cls, msk, attn_mask = self._heads(output, mask_features, features[0].shape[-2:], mask_pad, pads[0])

        classes, masks = [], []
        classes.append(cls)
        masks.append(msk)
        for i in range(self.num_layers):
            lvl = i % self.num_feature_levels
            output = self.cross_attn[i](output, src[lvl], attn_mask, pos[lvl], query_embed)
            output = self.self_attn[i](output, query_embed)
            output = self.ffn[i](output)
            nxt = (i + 1) % self.num_feature_levels
            cls, msk, attn_mask = self._heads(output, mask_features, features[nxt].shape[-2:], mask_pad, pads[nxt])
            classes.append(cls)
            masks.append(msk)
        return {
            "pred_logits": classes[-1],
            "pred_masks": masks[-1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1], strict=True)],
        }

    def _heads(self, output: Tensor, mask_features: Tensor, size, mask_pad: Optional[Tensor] = None,
               level_pad: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Class logits (B, Q, K+1), mask logits (B, Q, H/4, W/4) and the next attention mask (B*nhead, Q, hw).

        mask_pad / level_pad: padding (B, H/4, W/4) of the masks and (B, h, w) of the next level."""
        x = self.decoder_norm(output).transpose(0, 1)  # (B, Q, C)
        logits = self.class_embed(x)
        mask_embed = self.mask_embed(x)
        masks = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        if self.roi_classifier is not None:
            logits = logits + self.roi_classifier(mask_features, masks, mask_pad)
        with torch.no_grad():
            # logit 0 on padding: a blend with it keeps the sign of the image cells, so the threshold
            # below reads the image only
            small = F.interpolate(zero_padding(masks.detach(), mask_pad), size=size, mode="bilinear",
                                  align_corners=False)
            attn_mask = small.sigmoid().flatten(2) < 0.5  # True = outside the predicted mask = blocked
            attn_mask = attn_mask_with_padding(attn_mask, level_pad)
            attn_mask = attn_mask.unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1)
        return logits, masks, attn_mask


def attn_mask_with_padding(attn_mask: Tensor, pad: Optional[Tensor]) -> Tensor:
    """(B, Q, hw) blocked cells, padding (B, h, w) or None -> padding blocked too.

    A query whose mask is empty on the image would attend to nothing (NaN softmax): it sees the
    whole image instead (and still no padding)."""
    if pad is None:
        return attn_mask.masked_fill(attn_mask.all(-1, keepdim=True), False)
    pad = pad.flatten(1)[:, None, :]
    blocked = attn_mask | pad
    return torch.where(blocked.all(-1, keepdim=True), pad.expand_as(blocked), blocked)
