"""Mask2Former's masked-attention transformer decoder (Cheng et al., CVPR 2022, Sec. 3.2).

Learned queries attend, layer after layer, to one pixel-decoder level in round-robin order
(coarsest first). Each cross-attention is *masked*: a query only sees the pixels inside the mask
it predicted after the previous layer (sigmoid >= 0.5 at that level's resolution). Predictions
(class logits over K classes + "no object", mask logits) come after every layer, which gives the
deep supervision of the criterion.

With a padding mask, no query attends to padding (it is added to every attention mask), position
encodings follow the image's extent, and the attention masks are resized from the image cells of
the predicted masks only, so predictions do not depend on how far the batch pads an image.

Mask-piloted training (optional; MP-Former, Zhang et al., CVPR 2023): in training, given the ground
truth, one extra query per instance starts from its (noised) class embedding and attends, in every
layer, inside that instance's ground-truth mask instead of a predicted one. Its predictions are
supervised against that instance directly (no matching), so every layer learns to turn a mask region
into the instance's mask and class from the first step, when the matched queries' own masks are still
noise. The matched queries never see the piloted ones, and inference runs without them.
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
        query_init: "learned" (Mask2Former) or "encoder" (two-stage, MaskDINO).
        mask_piloted: add the piloted queries in training when the ground truth is given.
        pilot_label_noise: share of piloted queries whose class embedding is that of a random class
            (MP-Former's label noise, so the layers must read the class from the pixels too).
        query_groups: G >= 1 (Group DETR, Chen et al., ICCV 2023). In training the decoder runs G
            independent groups of Q queries (own embeddings, self-attention only within a group) and
            returns all G*Q predictions with "query_groups": G, so the criterion matches each group
            one-to-one on its own and every instance teaches G queries per step instead of one. In
            eval mode only the first group runs: inference costs and outputs as with G = 1.
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
        query_init: str = "learned",
        query_groups: int = 1,
        mask_piloted: bool = False,
        pilot_label_noise: float = 0.2,
        roi_classifier: Optional[MaskRoIClassifier] = None,
    ) -> None:
        super().__init__()
        if query_init not in ("learned", "encoder"):
            raise ValueError(f"query_init must be 'learned' or 'encoder' (got {query_init!r})")
        if query_groups < 1:
            raise ValueError(f"query_groups must be >= 1 (got {query_groups})")
        if query_groups > 1 and query_init != "learned":
            # the encoder's top-k tokens are one set: G groups of them would be G copies
            raise ValueError("query_groups > 1 needs query_init 'learned'")
        self.query_init = query_init
        self.num_queries = num_queries
        self.query_groups = query_groups
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_feature_levels = num_feature_levels
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.self_attn = nn.ModuleList(SelfAttentionLayer(hidden_dim, nheads, pre_norm) for _ in range(dec_layers))
        self.cross_attn = nn.ModuleList(CrossAttentionLayer(hidden_dim, nheads, pre_norm) for _ in range(dec_layers))
        self.ffn = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward, pre_norm) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries * query_groups, hidden_dim)
        self.query_embed = nn.Embedding(num_queries * query_groups, hidden_dim)
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
        if query_init == "encoder":
            # two-stage (MaskDINO): score every pixel-decoder token, start the queries from the top-k
            self.enc_output = nn.Linear(hidden_dim, hidden_dim)
            self.enc_norm = nn.LayerNorm(hidden_dim)
        self.mask_piloted = mask_piloted
        self.pilot_label_noise = pilot_label_noise
        if mask_piloted:
            self.label_embed = nn.Embedding(num_classes, hidden_dim)
            self.pilot_pos = nn.Embedding(1, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.roi_classifier = roi_classifier
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        for module in (*self.self_attn, *self.cross_attn, *self.ffn):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def forward(self, features: list[Tensor], mask_features: Tensor, mask: Optional[Tensor] = None,
                pilot: Optional[tuple[Tensor, Tensor]] = None) -> dict:
        """
        Args:
            features: pixel-decoder levels, coarsest first, each (B, C, h_l, w_l).
            mask_features: (B, mask_dim, H/4, W/4).
            mask: (B, H, W) bool, True on padding, or None (no padding).
            pilot: ground truth for the piloted queries (used in training with mask_piloted only):
                labels (B, M) int64 (-1 = no instance in that slot) and masks (B, M, H, W) over the
                padded input; slot j of image b is its j-th instance.

        Returns:
            {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, H/4, W/4),
             "aux_outputs": [{"pred_logits", "pred_masks"}] * dec_layers} (before each layer, first = the
            queries before any attention). In training with query_groups G > 1, Q is G * num_queries
            (group after group) and the dict also holds "query_groups": G. With piloted queries the dict
            also holds "pilot_outputs": {"pred_logits" (B, M, K+1), "pred_masks", "aux_outputs"} in slot order.
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
        groups = self.query_groups if self.training else 1
        n = self.num_queries * groups
        query_embed = self.query_embed.weight[:n].unsqueeze(1).repeat(1, b, 1)  # (Q, B, C)
        self_mask = None
        if groups > 1:  # block-diagonal: a group never sees another group's queries
            group_of = torch.arange(n, device=query_embed.device) // self.num_queries
            self_mask = group_of[:, None] != group_of[None, :]
        if self.query_init == "encoder":
            output, (cls, msk, attn_mask) = self._select_queries(src, pads, mask_features, mask_pad,
                                                                 features[0].shape[-2:])
        else:
            output = self.query_feat.weight[:n].unsqueeze(1).repeat(1, b, 1)
            cls, msk, attn_mask = self._heads(output, mask_features, features[0].shape[-2:], mask_pad, pads[0])
        pilot_blocked = None
        if pilot is not None and self.mask_piloted and self.training and pilot[0].shape[1] > 0:
            content, pilot_pos, pilot_blocked = self._pilot_queries(pilot, [f.shape[-2:] for f in features], pads)
            first = self._heads(content, mask_features, features[0].shape[-2:], mask_pad, pads[0], pilot_blocked[0])
            cls, msk, attn_mask = (torch.cat(pair, 1) for pair in zip((cls, msk, attn_mask), first, strict=True))
            output = torch.cat([output, content], 0)
            query_embed = torch.cat([query_embed, pilot_pos], 0)
            self_mask = pilot_self_mask(n, pilot[0] >= 0, self_mask, self.num_heads)

        classes, masks = [], []
        classes.append(cls)
        masks.append(msk)
        for i in range(self.num_layers):
            lvl = i % self.num_feature_levels
            output = self.cross_attn[i](output, src[lvl], attn_mask, pos[lvl], query_embed)
            output = self.self_attn[i](output, query_embed, self_mask)
            output = self.ffn[i](output)
            nxt = (i + 1) % self.num_feature_levels
            cls, msk, attn_mask = self._heads(output, mask_features, features[nxt].shape[-2:], mask_pad, pads[nxt],
                                              None if pilot_blocked is None else pilot_blocked[nxt])
            classes.append(cls)
            masks.append(msk)
        out = _layer_outputs(classes, masks, slice(0, n))
        if pilot_blocked is not None:
            out["pilot_outputs"] = _layer_outputs(classes, masks, slice(n, None))
        if groups > 1:
            out["query_groups"] = groups
        return out

    def _select_queries(self, src: list[Tensor], pads: list[Tensor | None], mask_features: Tensor,
                        mask_pad: Optional[Tensor], size) -> tuple[Tensor, tuple]:
        """Two-stage query initialisation (MaskDINO): every pixel-decoder token gets class and mask
        predictions from the shared heads; the Q tokens with the highest foreground score become the
        initial queries (detached, as in MaskDINO) and their predictions are the decoder's first
        (supervised) output, so the queries start on objects instead of learning where they are from
        scratch; padding tokens are never chosen. `size`: the first level's grid. Returns the queries
        (Q, B, C) and (class logits, mask logits, attention mask)."""
        memory = self.enc_norm(self.enc_output(torch.cat(src, dim=0)))  # (N, B, C)
        with torch.no_grad():
            scores = self.class_embed(self.decoder_norm(memory))[..., :-1].max(-1).values  # (N, B)
            if pads[0] is not None:  # padding tokens are never chosen
                padded = torch.cat([p.flatten(1) for p in pads], dim=1).transpose(0, 1)  # (N, B)
                scores = scores.masked_fill(padded, float("-inf"))
        k = min(self.query_feat.num_embeddings, memory.shape[0])
        idx = scores.topk(k, dim=0).indices  # (k, B)
        chosen = memory.gather(0, idx[..., None].expand(-1, -1, memory.shape[-1]))  # (k, B, C)
        if k < self.query_feat.num_embeddings:  # fewer tokens than queries: learned queries fill up
            rest = self.query_feat.weight[k:].unsqueeze(1).repeat(1, chosen.shape[1], 1)
            chosen = torch.cat([chosen, rest], dim=0)
        return chosen.detach(), self._heads(chosen, mask_features, size, mask_pad, pads[0])

    def _pilot_queries(self, pilot: tuple[Tensor, Tensor], sizes: list, pads: list) -> tuple[Tensor, Tensor, list]:
        """Piloted queries' content and position (M, B, C) and, per level, their blocked cells (B, M, h*w):
        everything outside the instance's mask at that level (any overlap counts, so a small instance
        keeps a cell at the coarsest level) and the padding; an empty slot sees the whole image."""
        labels, masks = pilot
        b, m = labels.shape
        noisy = labels.clamp(min=0)
        if self.pilot_label_noise > 0:
            flip = torch.rand(labels.shape, device=labels.device) < self.pilot_label_noise
            noisy = torch.where(flip, torch.randint_like(noisy, self.label_embed.num_embeddings), noisy)
        content = self.label_embed(noisy).transpose(0, 1)  # (M, B, C)
        pos = self.pilot_pos.weight[None].expand(m, b, -1)
        blocked = []
        for size, pad in zip(sizes, pads, strict=True):
            inside = F.adaptive_max_pool2d(masks.float(), tuple(size)).flatten(2) > 0  # (B, M, h*w)
            blocked.append(attn_mask_with_padding(~inside, pad))
        return content, pos, blocked

    def _heads(self, output: Tensor, mask_features: Tensor, size, mask_pad: Optional[Tensor] = None,
               level_pad: Optional[Tensor] = None,
               pilot_blocked: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Class logits (B, Q, K+1), mask logits (B, Q, H/4, W/4) and the next attention mask (B*nhead, Q, hw).

        mask_pad / level_pad: padding (B, H/4, W/4) of the masks and (B, h, w) of the next level.
        pilot_blocked: (B, M, hw) attention masks of the last M queries (the piloted ones) at the next
        level, used instead of their predicted masks."""
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
            if pilot_blocked is not None:
                attn_mask = torch.cat([attn_mask[:, :attn_mask.shape[1] - pilot_blocked.shape[1]], pilot_blocked], 1)
            attn_mask = attn_mask.unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1)
        return logits, masks, attn_mask


def _layer_outputs(classes: list[Tensor], masks: list[Tensor], part: slice) -> dict:
    """The last layer's predictions of the queries in `part` and the earlier layers' as "aux_outputs"."""
    return {
        "pred_logits": classes[-1][:, part],
        "pred_masks": masks[-1][:, part],
        "aux_outputs": [{"pred_logits": c[:, part], "pred_masks": m[:, part]}
                        for c, m in zip(classes[:-1], masks[:-1], strict=True)],
    }


def pilot_self_mask(n: int, valid: Tensor, self_mask: Optional[Tensor], nheads: int) -> Tensor:
    """Self-attention mask (B*nheads, n+M, n+M), True = blocked, with M piloted queries after the n
    matched ones: the matched queries never see the piloted ones (their answers would leak the ground
    truth into the predictions that are matched), and no query sees an empty pilot slot.
    `valid`: (B, M) slots holding an instance; `self_mask`: (n, n) among the matched queries or None."""
    b, m = valid.shape
    total = n + m
    blocked = torch.zeros(b, total, total, dtype=torch.bool, device=valid.device)
    if self_mask is not None:
        blocked[:, :n, :n] = self_mask
    blocked[:, :n, n:] = True
    blocked[:, :, n:] |= ~valid[:, None, :]
    return blocked.repeat_interleave(nheads, dim=0)


def attn_mask_with_padding(attn_mask: Tensor, pad: Optional[Tensor]) -> Tensor:
    """(B, Q, hw) blocked cells, padding (B, h, w) or None -> padding blocked too.

    A query whose mask is empty on the image would attend to nothing (NaN softmax): it sees the
    whole image instead (and still no padding)."""
    if pad is None:
        return attn_mask.masked_fill(attn_mask.all(-1, keepdim=True), False)
    pad = pad.flatten(1)[:, None, :]
    blocked = attn_mask | pad
    return torch.where(blocked.all(-1, keepdim=True), pad.expand_as(blocked), blocked)
