"""The one `Config` tree that reaches every stage.

Plain dataclasses with typed fields and defaults; YAML files in `configs/` are mapped onto
them by `pipeline.config_io.load_config`, which rejects unknown keys and wrong types.
Builders take explicit keyword arguments and read the tree in one place (`from_config`
style), so a module can be built in a test without any config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from depth_cache.config import DepthConfig


@dataclass
class DataConfig:
    """Where the images and annotations are, and how they are augmented."""

    image_dir: str = "data/synthetic/images/train"  # images of the train split (labelled + unlabelled)
    train_json: str = "data/synthetic/splits/train_5pct_seed0_labeled.json"  # labelled COCO JSON
    unlabeled_list: Optional[str] = "data/synthetic/splits/train_5pct_seed0_unlabeled.json"
    val_image_dir: str = "data/synthetic/images/val"
    val_json: str = "data/synthetic/annotations/val.json"
    num_classes: int = 3
    image_size: int = 128  # side of the square training canvas (crop / pad target)
    min_scale: float = 0.5  # large-scale jitter range, as a factor of image_size
    max_scale: float = 1.5
    hflip: bool = True
    test_size: int = 128  # short side at evaluation
    feature_stride: int = 8  # cached feature maps are brought to this stride of the image
    num_workers: int = 2
    skip_missing_cache: bool = False  # skip images without a cache entry instead of failing
    # image files that are symlinks to outside image_dir are refused unless this is set (cache-integrity)
    allow_symlinks_outside: bool = False


@dataclass
class DepthFusionConfig:
    """Depth Fusion: which cached decoder level feeds which backbone level."""

    enabled: bool = True
    # backbone level name (res2..res5) -> cached level name (path_1..path_4, or depth pyramid level)
    # every level by default: the stride-4 mask features come mostly from res2, so fusing only
    # res4/res5 leaves the masks nearly blind to depth (measured in tests/model: AP 0.09 vs 0.64)
    sources: dict[str, str] = field(
        default_factory=lambda: {"res2": "path_4", "res3": "path_4", "res4": "path_4", "res5": "path_4"}
    )


@dataclass
class ModelConfig:
    """Mask2Former meta-architecture, sizes and loss weights."""

    backbone: str = "resnet18"  # any timm model with features_only
    backbone_weights: Optional[str] = None  # local timm checkpoint; None = random init
    hidden_dim: int = 128
    num_queries: int = 20
    nheads: int = 4
    dim_feedforward: int = 512
    dec_layers: int = 3
    enc_layers: int = 2  # deformable-attention layers in the pixel decoder
    mask_dim: int = 128
    pre_norm: bool = False
    depth_fusion: DepthFusionConfig = field(default_factory=DepthFusionConfig)
    # losses (Mask2Former defaults)
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpoints and logging (supervised and teacher-student)."""

    output_dir: str = "runs/demo"
    max_iter: int = 1000
    batch_size: int = 8  # labelled images per step (global, over all processes)
    lr: float = 1e-4
    weight_decay: float = 0.05
    backbone_lr_mult: float = 0.1
    warmup_iters: int = 50
    schedule: Literal["poly", "step"] = "poly"
    steps: list[int] = field(default_factory=list)  # for schedule=step
    gamma: float = 0.1
    clip_grad: float = 0.01  # full-model gradient-norm clip as in Mask2Former; 0 = off
    amp: bool = True  # autocast on cuda (ignored on cpu)
    checkpoint_period: int = 200
    eval_period: int = 200
    log_period: int = 10
    seed: int = 0
    device: str = "auto"


@dataclass
class ControllerConfig:
    """Depth Controller: the weight of the depth pseudo-labels in the unsupervised loss."""

    kind: Literal["adaptive", "constant", "scheduled"] = "adaptive"
    init_weight: float = 0.5
    min_weight: float = 0.0
    max_weight: float = 1.0
    momentum: float = 0.99  # running statistics
    schedule_iters: int = 1000  # scheduled variant: cosine ramp length
    final_weight: float = 0.2  # scheduled variant: the weight at and after schedule_iters
    # adaptive: w = min + (max - min) * sigmoid(logit(u0) - agreement_gain * (agreement - agreement_ref)
    #                                           + loss_gain * log(loss_rgb / loss_depth)), see depth_controller.py
    agreement_gain: float = 4.0  # > 0: w falls (hands over to RGB) as the two pseudo-label sets agree
    agreement_ref: float = 0.5  # agreement at which the agreement term is neutral
    loss_gain: float = 1.0  # > 0: the set the student fits worse gets less weight; 0 = off
    agreement_iou: float = 0.5  # mask IoU above which an RGB and a depth pseudo-label match


@dataclass
class SemiConfig:
    """Teacher-student training after Guided Distillation, with depth guidance."""

    enabled: bool = False
    # Timeline in iterations: stage A = [0, teacher_iters) trains the teacher on labels only;
    # stage B = [teacher_iters, train.max_iter) trains the student on labels + pseudo-labels.
    teacher_iters: int = 500
    teacher_checkpoint: Optional[str] = None  # skip stage A: start stage B from this teacher
    # the student starts from the teacher's weights, or afresh (GD's recipe, pretrained backbone only)
    student_init: Literal["teacher", "scratch"] = "teacher"
    burn_in_iter: int = 100  # stage-B steps with a frozen teacher; then teacher := student, then EMA
    ema_decay: float = 0.9996
    unlabeled_batch_size: int = 8
    unsup_weight: float = 2.0
    score_threshold: float = 0.7
    mask_threshold: float = 0.5
    min_mask_area: int = 5  # pixels at the training canvas
    # pseudo-labels whose mask IoU with a higher-scored one exceeds this are dropped (duplicates); None = keep all
    pseudo_dedup_iou: Optional[float] = 0.9
    # how the teacher's depth view is drawn: "gray" replicates depth to 3 channels, "jet" colour-maps it
    depth_view: Literal["gray", "jet"] = "gray"
    # EMA of floating-point buffers: "average" like the parameters, or "copy" the student's
    ema_buffers: Literal["average", "copy"] = "average"
    depth_pseudo_labels: bool = True  # teacher also predicts on the depth view
    controller: ControllerConfig = field(default_factory=ControllerConfig)


@dataclass
class EvalConfig:
    """Inference and COCO evaluation."""

    max_detections: int = 100
    score_threshold: float = 0.0
    batch_size: int = 8


@dataclass
class Config:
    """The whole experiment."""

    data: DataConfig = field(default_factory=DataConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
