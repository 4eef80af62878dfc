"""Mask2Former's set criterion: the losses of matched predictions (Cheng et al., CVPR 2022, Sec. 4.1).

After Hungarian matching, every query gets a class target (its matched instance's class, or
"no object" with a lower weight `eos_coef`) and every matched query a mask target. The masks are
compared on `num_points` importance-sampled points (PointRend: mostly where the prediction is
uncertain), read from the stride-4 logits and from the FULL-RESOLUTION target masks, so the
target's detail is not lost on the coarse logit grid. The same losses are applied to every
intermediate decoder prediction (deep supervision).

Per-image weights: a target dict may carry `"weight"` (a float, default 1); that image's terms are
multiplied by it. Normalisers (the class-weight sum, the number of masks) stay unweighted, so a
weight w on every image scales the loss by w (what a caller weighting a whole loss expects).
Images without any target contribute only the "no object" class term, never NaN.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from dgseg.pipeline.model.matcher import HungarianMatcher
from dgseg.pipeline.model.point_sampling import pad_targets, point_sample, uncertain_point_coords
from torch import Tensor, nn


def dice_loss(inputs: Tensor, targets: Tensor) -> Tensor:
    """Per-mask dice loss. inputs: (M, P) logits; targets: (M, P) in [0, 1] -> (M,)."""
    prob = inputs.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor) -> Tensor:
    """Per-mask mean binary cross-entropy over points. (M, P), (M, P) -> (M,)."""
    return F.binary_cross_entropy_with_logits(inputs, targets, reduction="none").mean(1)


class SetCriterion(nn.Module):
    """Losses of a Mask2Former output against instance targets.

    Args:
        num_classes: K (the logits have K + 1 entries, the last being "no object").
        matcher: assigns queries to targets.
        weight_dict: weights of "loss_ce", "loss_mask", "loss_dice" (applied to the aux terms too).
        eos_coef: class weight of "no object".
        num_points: points sampled per matched mask.
        oversample_ratio: candidates per kept point for the uncertainty ranking.
        importance_sample_ratio: share of points chosen by uncertainty (the rest uniform).
        deep_supervision: also supervise every intermediate prediction ("aux_outputs").
        mask_stride: input pixels per mask-logit cell.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
        mask_stride: int = 4,
    ) -> None:
        super().__init__()
        unknown = set(weight_dict) - {"loss_ce", "loss_mask", "loss_dice"}
        if unknown:
            raise ValueError(f"unknown loss names in weight_dict: {sorted(unknown)}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        self.mask_stride = mask_stride
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """
        Args:
            outputs: the model's {"pred_logits" (B, Q, K+1), "pred_masks" (B, Q, h, w), "aux_outputs": [...]}.
            targets: per image {"labels": (N,) int64, "masks": (N, H, W) bool at input resolution,
                optional "weight": float}.

        Returns:
            {"loss_ce", "loss_mask", "loss_dice", and "loss_ce_0", ... per aux output}, each already
            multiplied by its weight; the total loss is their sum.
        """
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(f"{len(targets)} target sets for a batch of {outputs['pred_logits'].shape[0]}")
        device = outputs["pred_logits"].device
        weights = torch.tensor([float(t.get("weight", 1.0)) for t in targets], device=device)
        num_masks = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
            num_masks = num_masks / dist.get_world_size()
        num_masks = num_masks.clamp(min=1.0)

        return self._all_losses(outputs, targets, weights, num_masks)

    def _all_losses(self, outputs: dict, targets: list[dict], weights: Tensor, num_masks: Tensor) -> dict[str, Tensor]:
        """The final prediction's losses and, with deep supervision, every aux prediction's."""
        losses = self._losses(outputs, targets, weights, num_masks)
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets, weights, num_masks).items()})
        return losses

    def _losses(self, outputs: dict, targets: list[dict], weights: Tensor, num_masks: Tensor) -> dict[str, Tensor]:
        """One prediction's terms after its own Hungarian matching."""
        indices = self.matcher(outputs, targets)
        out = {}
        if "loss_ce" in self.weight_dict:
            out["loss_ce"] = self.weight_dict["loss_ce"] * self.loss_labels(outputs, targets, indices, weights)
        if "loss_mask" in self.weight_dict or "loss_dice" in self.weight_dict:
            bce, dice = self.loss_masks(outputs, targets, indices, weights, num_masks)
            if "loss_mask" in self.weight_dict:
                out["loss_mask"] = self.weight_dict["loss_mask"] * bce
            if "loss_dice" in self.weight_dict:
                out["loss_dice"] = self.weight_dict["loss_dice"] * dice
        return out

    def loss_labels(self, outputs: dict, targets: list[dict], indices, weights: Tensor) -> Tensor:
        """Cross-entropy over all queries; unmatched ones target "no object" (class weight eos_coef)."""
        logits = outputs["pred_logits"].float()
        target_classes = self._target_classes(logits, targets, indices)
        ce = F.cross_entropy(logits.transpose(1, 2), target_classes, reduction="none")  # (B, Q)
        class_w = self.empty_weight[target_classes]
        # same as cross_entropy(weight=empty_weight) when every image weight is 1
        return (ce * class_w * weights[:, None]).sum() / class_w.sum()

    def _target_classes(self, logits: Tensor, targets: list[dict], indices) -> Tensor:
        """(B, Q) class of each query's matched instance; K ("no object") for unmatched queries."""
        b, q, _ = logits.shape
        target_classes = torch.full((b, q), self.num_classes, dtype=torch.int64, device=logits.device)
        for i, (t, (src, tgt)) in enumerate(zip(targets, indices, strict=True)):
            if len(src):
                target_classes[i, src.to(logits.device)] = t["labels"].to(logits.device)[tgt.to(logits.device)]
        return target_classes

    def loss_masks(self, outputs: dict, targets: list[dict], indices, weights: Tensor,
                   num_masks: Tensor) -> tuple[Tensor, Tensor]:
        """Point-sampled BCE and dice of matched masks, summed over masks / num_masks."""
        pred_masks = outputs["pred_masks"]
        src_list, tgt_list, w_list = [], [], []
        for i, (t, (src, tgt)) in enumerate(zip(targets, indices, strict=True)):
            if len(src) == 0:
                continue
            src_list.append(pred_masks[i, src.to(pred_masks.device)])
            tgt_masks = t["masks"].to(pred_masks.device)[tgt.to(pred_masks.device)]
            tgt_list.append(pad_targets(tgt_masks.float(), pred_masks.shape[-2:], self.mask_stride))
            w_list.append(weights[i].expand(len(src)))
        if not src_list:
            zero = pred_masks.sum() * 0.0  # keeps the graph (and DDP's unused-parameter check) intact
            return zero, zero
        src_masks = torch.cat(src_list).float()[:, None]  # (M, 1, h, w)
        with torch.no_grad():
            coords = uncertain_point_coords(src_masks, self.num_points, self.oversample_ratio,
                                            self.importance_sample_ratio)
            # targets of different images may differ in size: sample each image's own block
            labels, start = [], 0
            for tgt_masks in tgt_list:
                n = len(tgt_masks)
                labels.append(point_sample(tgt_masks[:, None], coords[start:start + n])[:, 0])
                start += n
            point_labels = torch.cat(labels)
        point_logits = point_sample(src_masks, coords)[:, 0]
        mask_w = torch.cat(w_list)
        bce = (sigmoid_ce_loss(point_logits, point_labels) * mask_w).sum() / num_masks
        dice = (dice_loss(point_logits, point_labels) * mask_w).sum() / num_masks
        return bce, dice

