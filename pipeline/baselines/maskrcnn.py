"""torchvision's Mask R-CNN, ResNet-18-FPN from random init, slim heads: the anchor model.

Input modes (the adapter builds the matching tensors):
- `rgb`: the image, 3 channels;
- `depth`: the cached depth map at the image's resolution, min-max per image, replicated to 3 channels;
- `rgbd`: the image plus that depth map as a 4th channel (early fusion: the first conv takes 4 channels).

BatchNorm: torchvision's detection backbones default to `FrozenBatchNorm2d`, which is right for
ImageNet-pretrained weights but, from random init, freezes every norm at the identity (mean 0, var 1,
scale 1, bias 0): the network then trains with no normalisation at all. `norm="bn"` (the default)
uses ordinary `BatchNorm2d` with batch statistics; `norm="frozen"` keeps torchvision's default for
comparison (`cli.py bench anchor --norm frozen`).
"""

from __future__ import annotations

from torch import nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.misc import FrozenBatchNorm2d

INPUT_MODES = ("rgb", "depth", "rgbd")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# depth after per-image min-max is spread over [0, 1]: centre it and scale by a uniform variable's std
DEPTH_MEAN, DEPTH_STD = 0.5, 0.29
NORMS = {"bn": nn.BatchNorm2d, "frozen": FrozenBatchNorm2d}

BOX_HEAD_DIM = 256
MASK_HEAD_LAYERS = (64, 64)
ROIS_PER_IMAGE = 32


def input_channels(mode: str) -> int:
    """Channels of the model's input in `mode`."""
    check_mode(mode)
    return 4 if mode == "rgbd" else 3


def check_mode(mode: str) -> None:
    if mode not in INPUT_MODES:
        raise ValueError(f"unknown anchor input mode {mode!r}; choose from {', '.join(INPUT_MODES)}")


def normalisation(mode: str) -> tuple[list[float], list[float]]:
    """(mean, std) per input channel, as `GeneralizedRCNNTransform` applies them."""
    check_mode(mode)
    if mode == "rgb":
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if mode == "depth":
        return [DEPTH_MEAN] * 3, [DEPTH_STD] * 3
    return [*IMAGENET_MEAN, DEPTH_MEAN], [*IMAGENET_STD, DEPTH_STD]


def build_maskrcnn(num_classes: int, mode: str, image_size: int, norm: str = "bn",
                   detections_per_img: int = 100) -> MaskRCNN:
    """Mask R-CNN for `num_classes` foreground classes (torchvision adds the background, label 0).

    `min_size = max_size = image_size`: the transform brings every image to that side (no-op for the
    demo's square images of that size). All backbone layers train; nothing is downloaded.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose from {', '.join(NORMS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=NORMS[norm], trainable_layers=5)
    channels = input_channels(mode)
    if channels != 3:
        conv = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's ResNet
        backbone.body.conv1 = conv
    mean, std = normalisation(mode)
    fpn = backbone.out_channels
    resolution = 7  # MultiScaleRoIAlign output of the box branch
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=image_size,
        max_size=image_size,
        image_mean=mean,
        image_std=std,
        box_head=TwoMLPHead(fpn * resolution * resolution, BOX_HEAD_DIM),
        box_predictor=FastRCNNPredictor(BOX_HEAD_DIM, num_classes + 1),
        box_batch_size_per_image=ROIS_PER_IMAGE,
        box_detections_per_img=detections_per_img,
        mask_head=MaskRCNNHeads(fpn, list(MASK_HEAD_LAYERS), 1),
        mask_predictor=MaskRCNNPredictor(MASK_HEAD_LAYERS[-1], MASK_HEAD_LAYERS[-1], num_classes + 1),
    )
