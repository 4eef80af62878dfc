"""Builders: the one place where `ModelConfig` is mapped onto the model and the criterion."""

from __future__ import annotations

from dgseg.pipeline.config import ModelConfig
from dgseg.pipeline.model.backbone import Backbone
from dgseg.pipeline.model.criterion import SetCriterion
from dgseg.pipeline.model.depth_fusion import DepthFusion
from dgseg.pipeline.model.mask_former import MaskFormer
from dgseg.pipeline.model.matcher import HungarianMatcher
from dgseg.pipeline.model.pixel_decoder import MSDeformAttnPixelDecoder
from dgseg.pipeline.model.roi_classifier import MaskRoIClassifier
from dgseg.pipeline.model.transformer_decoder import MaskedTransformerDecoder


def build_model(cfg: ModelConfig, num_classes: int, depth_channels: dict[str, int]) -> MaskFormer:
    """The segmenter for `num_classes` classes.

    Args:
        cfg: model section of the config.
        num_classes: K.
        depth_channels: {depth feature name: channels} the depth source provides; Depth Fusion
            (when `cfg.depth_fusion.enabled`) must find its sources there.
    """
    backbone = Backbone(cfg.backbone, weights=cfg.backbone_weights, norm=cfg.backbone_norm)
    fusion = None
    if cfg.depth_fusion.enabled:
        if not depth_channels:
            raise ValueError(
                "model.depth_fusion.enabled is true but the depth source provides no features "
                "(depth mode 'none'?); disable Depth Fusion or choose a depth mode"
            )
        fusion = DepthFusion(cfg.depth_fusion.sources, backbone.channels, depth_channels,
                             inside_backbone=cfg.depth_fusion.inside_backbone,
                             init=cfg.depth_fusion.init)
    input_shape = {k: (backbone.channels[k], backbone.strides[k]) for k in backbone.channels}
    pixel_decoder = MSDeformAttnPixelDecoder(
        input_shape,
        conv_dim=cfg.hidden_dim,
        mask_dim=cfg.mask_dim,
        enc_layers=cfg.enc_layers,
        nheads=cfg.nheads,
        dim_feedforward=cfg.dim_feedforward,
    )
    decoder = MaskedTransformerDecoder(
        in_channels=cfg.hidden_dim,
        num_classes=num_classes,
        hidden_dim=cfg.hidden_dim,
        num_queries=cfg.num_queries,
        nheads=cfg.nheads,
        dim_feedforward=cfg.dim_feedforward,
        dec_layers=cfg.dec_layers,
        pre_norm=cfg.pre_norm,
        mask_dim=cfg.mask_dim,
        roi_classifier=MaskRoIClassifier(cfg.mask_dim, num_classes, size=cfg.roi_size) if cfg.roi_classifier else None,
    )
    backbone.activation_checkpointing = pixel_decoder.activation_checkpointing = cfg.activation_checkpointing
    return MaskFormer(backbone, pixel_decoder, decoder, fusion)


def build_criterion(cfg: ModelConfig, num_classes: int) -> SetCriterion:
    """Hungarian matcher + set criterion with Mask2Former's loss weights from the config."""
    matcher = HungarianMatcher(
        cost_class=cfg.class_weight,
        cost_mask=cfg.mask_weight,
        cost_dice=cfg.dice_weight,
        num_points=cfg.train_num_points,
    )
    weight_dict = {"loss_ce": cfg.class_weight, "loss_mask": cfg.mask_weight, "loss_dice": cfg.dice_weight}
    return SetCriterion(
        num_classes,
        matcher,
        weight_dict,
        eos_coef=cfg.no_object_weight,
        num_points=cfg.train_num_points,
        oversample_ratio=cfg.oversample_ratio,
        importance_sample_ratio=cfg.importance_sample_ratio,
        deep_supervision=cfg.deep_supervision,
    )
