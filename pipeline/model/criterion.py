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

Semantic auxiliary loss (optional, "loss_sem" in weight_dict): an output carrying "pred_semantic"
(B, K+1, h, w) per-pixel class logits (the last class = background) gets a cross-entropy against the
class map the targets paint (background where no instance is), on `num_points` uniform points per
image inside the image's own extent. Unlike the matched losses it supervises every pixel from the
first step, which the set losses cannot while the matching is still random (kMaX-DeepLab's auxiliary
semantic loss, Yu et al., ECCV 2022).

Mask-piloted queries (MP-Former): an output carrying "pilot_outputs" (slot j of image b = its j-th
instance) adds "loss_pilot_ce", "loss_pilot_mask", "loss_pilot_dice" (and "_i" per earlier layer): the same
terms with the slot's own instance as its match, class cross-entropy on the filled slots only, with the
weights of the matched terms.

Query groups (Group DETR): an output carrying "query_groups": G holds G groups of queries, one after
the other; each group is matched one-to-one to the targets on its own and the losses are the mean
over groups, so every loss keeps the scale it has with one group.
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
        unknown = set(weight_dict) - {"loss_ce", "loss_mask", "loss_dice", "loss_sem"}
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

        groups = int(outputs.get("query_groups", 1))
        if groups > 1:
            per_group = [self._all_losses(g, targets, weights, num_masks) for g in split_groups(outputs, groups)]
            losses = {k: torch.stack([p[k] for p in per_group]).mean() for k in per_group[0]}
        else:
            losses = self._all_losses(outputs, targets, weights, num_masks)
        if "pilot_outputs" in outputs:
            losses.update(self._pilot_losses(outputs["pilot_outputs"], targets, weights, num_masks))
        if "loss_sem" in self.weight_dict and "pred_semantic" in outputs:
            losses["loss_sem"] = self.weight_dict["loss_sem"] * self.loss_semantic(outputs["pred_semantic"],
                                                                                   targets, weights)
        return losses

    def _all_losses(self, outputs: dict, targets: list[dict], weights: Tensor, num_masks: Tensor) -> dict[str, Tensor]:
        """The final prediction's losses and, with deep supervision, every aux prediction's."""
        losses = self._losses(outputs, targets, weights, num_masks)
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets, weights, num_masks).items()})
        return losses

    def _pilot_losses(self, pilot: dict, targets: list[dict], weights: Tensor, num_masks: Tensor) -> dict[str, Tensor]:
        """Losses of the piloted queries, each against the instance of its slot, on every layer."""
        indices = [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in targets]
        layers = [("", pilot)]
        if self.deep_supervision:
            layers += [(f"_{i}", aux) for i, aux in enumerate(pilot.get("aux_outputs", []))]
        out = {}
        for suffix, o in layers:
            for k, v in self._losses(o, targets, weights, num_masks, indices, slots_only=True).items():
                out[k.replace("loss_", "loss_pilot_") + suffix] = v
        return out

    def _losses(self, outputs: dict, targets: list[dict], weights: Tensor, num_masks: Tensor,
                indices: list | None = None, slots_only: bool = False) -> dict[str, Tensor]:
        """One prediction's terms after its own Hungarian matching (or after the given `indices`;
        `slots_only`: the class term covers the matched queries only, none is taught "no object")."""
        if indices is None:
            indices = self.matcher(outputs, targets)
        out = {}
        if "loss_ce" in self.weight_dict:
            labels_loss = self.loss_matched_labels if slots_only else self.loss_labels
            out["loss_ce"] = self.weight_dict["loss_ce"] * labels_loss(outputs, targets, indices, weights)
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

    def loss_matched_labels(self, outputs: dict, targets: list[dict], indices, weights: Tensor) -> Tensor:
        """Cross-entropy of the matched queries only (mean over them, weighted per image)."""
        logits = outputs["pred_logits"].float()
        target_classes = self._target_classes(logits, targets, indices)
        matched = target_classes < self.num_classes
        ce = F.cross_entropy(logits.transpose(1, 2), target_classes, reduction="none")  # (B, Q)
        # no match anywhere: 0 that keeps the graph
        return (ce * weights[:, None] * matched).sum() / matched.sum().clamp(min=1)

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


    def loss_semantic(self, logits: Tensor, targets: list[dict], weights: Tensor) -> Tensor:
        """Per-pixel class cross-entropy on uniform points of each image, weighted per image.

        logits: (B, K+1, h, w) at `mask_stride`; an image's extent is its target masks' (H, W), which
        for a padded batch includes the batch's padding (background there)."""
        b, c, h, w = logits.shape
        if c != self.num_classes + 1:
            raise ValueError(f"pred_semantic has {c} channels; expected num_classes + 1 = {self.num_classes + 1}")
        per_image = []
        for i, t in enumerate(targets):
            ih, iw = t["masks"].shape[-2:]
            coords = torch.rand(self.num_points, 2, device=logits.device)
            # the logits cover (h, w) * stride input pixels; the image only its (ih, iw) top-left part
            scale = coords.new_tensor([iw / (w * self.mask_stride), ih / (h * self.mask_stride)])
            point_logits = point_sample(logits[i:i + 1].float(), (coords * scale)[None])[0]  # (K+1, P)
            ys = (coords[:, 1] * ih).long().clamp_(max=ih - 1)
            xs = (coords[:, 0] * iw).long().clamp_(max=iw - 1)
            per_image.append(F.cross_entropy(point_logits.t(), point_classes(t, ys, xs, self.num_classes)) * weights[i])
        return torch.stack(per_image).mean()


def point_classes(target: dict, ys: Tensor, xs: Tensor, num_classes: int) -> Tensor:
    """(P,) int64 class at pixels (ys, xs): the label of the instance covering it (the later one where
    instances overlap), `num_classes` (background) where none does."""
    masks = target["masks"].to(ys.device)
    labels = target["labels"].to(ys.device)
    order = torch.arange(1, len(labels) + 1, device=ys.device)
    covering = (masks[:, ys, xs].to(torch.int64) * order[:, None]).amax(0) if len(labels) else ys.new_zeros(ys.shape)
    return torch.cat([labels.new_full((1,), num_classes), labels])[covering]


def split_groups(outputs: dict, groups: int) -> list[dict]:
    """An output of G query groups -> G outputs of one group each (aux outputs split alike)."""
    q = outputs["pred_logits"].shape[1]
    if q % groups:
        raise ValueError(f"{q} queries do not split into {groups} groups")
    n = q // groups

    def part(o: dict, g: int) -> dict:
        return {k: o[k][:, g * n:(g + 1) * n] for k in ("pred_logits", "pred_masks")}

    return [
        {**part(outputs, g), "aux_outputs": [part(a, g) for a in outputs.get("aux_outputs", [])]}
        for g in range(groups)
    ]
