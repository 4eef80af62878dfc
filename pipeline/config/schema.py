"""The one `Config` tree that reaches every stage.

Plain dataclasses with typed fields and defaults; YAML files in `configs/` are mapped onto
them by `pipeline.config.loading.load_config`, which rejects unknown keys and wrong types and
checks every value against its declared range. Builders take explicit keyword arguments and
read the tree in one place (`from_config` style), so a module can be built in a test without
any config.

Adding a field: declare it with `setting(default, help="one line: what it means", range=...)`.
`help` is required for every field (a test walks the tree; `cli.py config show` prints it);
`range` is required for every numeric field (int, float, their Optional and list forms) and is
an interval in the usual notation, checked at load time with the key and its source named:
"[1, inf)" (at least 1), "(0, inf)" (positive), "[0, 1]", "[0, 1)" ... Checks that involve
several fields (min <= max, schedule lengths) live in `pipeline/config/checks.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from dgseg.depth_cache.config import DepthConfig, setting


@dataclass
class DataConfig:
    """Where the images and annotations are, and how they are augmented."""

    image_dir: str = setting("data/synthetic/images/train",
        help="folder of the training images, labelled and unlabelled (JSON file_name is relative to it)")
    train_json: str = setting("data/synthetic/splits/train_5pct_seed0_labeled.json",
                              help="labelled COCO JSON of the training split (e.g. make-splits' *_labeled.json)")
    unlabeled_list: Optional[str] = setting(
        "data/synthetic/splits/train_5pct_seed0_unlabeled.json",
        help="unlabelled image list {images: [...]} (make-splits' *_unlabeled.json); needed when semi.enabled")
    val_image_dir: str = setting("data/synthetic/images/val", help="folder of the validation images")
    val_json: str = setting("data/synthetic/annotations/val.json",
                            help="validation COCO JSON: the ground truth of evaluate and of the periodic evaluation")
    num_classes: int = setting(3, range="[1, inf)",
                               help="number of categories; must equal the categories listed in the train/val JSONs")
    image_size: int = setting(128, range="[32, inf)",
                              help="side in pixels of the square training canvas (large-scale jitter crops/pads to it)")
    min_scale: float = setting(0.5, range="(0, inf)",
                               help="large-scale jitter: smallest resize factor of the image, relative to image_size")
    max_scale: float = setting(1.5, range="(0, inf)",
                               help="large-scale jitter: largest resize factor of the image, relative to image_size")
    hflip: bool = setting(True, help="random horizontal flip of training images (and their cached maps)")
    test_size: int = setting(128, range="[32, inf)",
                             help="short side in pixels to which evaluate/predict resize an image")
    test_max_size: int = setting(0, range="[0, inf)",
                                 help="evaluate/predict: long side at most this (COCO: 1333); 0 = no cap")
    crop_size: Optional[list[int]] = setting(None, range="[32, inf)",
        help="training canvas [height, width] instead of the square image_size (Cityscapes: [512, 1024])")
    feature_stride: int = setting(8, range="[1, inf)",
                                  help="cached depth maps and features are resampled to 1/feature_stride of the image")
    num_workers: int = setting(2, range="[0, inf)",
                               help="DataLoader worker processes per loader (0 = load in the main process)")
    skip_missing_cache: bool = setting(False,
        help="skip images without a depth cache entry (with a warning) instead of failing")
    allow_symlinks_outside: bool = setting(
        False, help="accept image files that are symlinks to outside image_dir / val_image_dir (refused by default)")


@dataclass
class DepthFusionConfig:
    """Depth Fusion: which cached decoder level feeds which backbone level."""

    enabled: bool = setting(True, help="fuse cached depth features into the backbone levels (the paper's Depth Fusion)")
    # every level by default: the stride-4 mask features come mostly from res2, so fusing only
    # res4/res5 leaves the masks nearly blind to depth (measured in tests/model: AP 0.09 vs 0.64)
    sources: dict[str, str] = setting(
        factory=lambda: {"res2": "path_4", "res3": "path_4", "res4": "path_4", "res5": "path_4"},
        help="backbone level (res2..res5) -> the cached map fused into it (path_1..path_4, or files' depth_s{k})")
    inside_backbone: bool = setting(
        False, help="fuse each level as the backbone produces it, so later stages compute on depth (else side by side)")
    init: Literal["identity", "open"] = setting(
        "identity", help="depth weights of the fusion conv: identity = zero (RGB model at step 0, for a trained "
                         "backbone); open = random, so depth is used from step 0 (from-scratch runs)")


@dataclass
class ModelConfig:
    """Mask2Former meta-architecture, sizes and loss weights."""

    backbone: str = setting("resnet18", help="timm model name used with features_only (resnet18, resnet50, ...)")
    backbone_weights: Optional[str] = setting(
        None, help="local timm checkpoint of the backbone (never downloaded); null = random initialisation")
    backbone_norm: Literal["auto", "frozen", "batch"] = setting(
        "auto", help="backbone BatchNorm: frozen (Mask2Former), batch (live), auto = frozen with backbone_weights")
    hidden_dim: int = setting(128, range="[1, inf)",
                              help="width of the pixel decoder and the transformer decoder (a multiple of nheads)")
    num_queries: int = setting(20, range="[1, inf)", help="object queries: the most instances predicted per image")
    nheads: int = setting(4, range="[1, inf)", help="attention heads in the pixel decoder and the transformer decoder")
    dim_feedforward: int = setting(512, range="[1, inf)", help="hidden size of the feed-forward blocks")
    dec_layers: int = setting(3, range="[1, inf)",
                              help="masked-attention decoder layers (each gives a deep-supervision loss)")
    enc_layers: int = setting(2, range="[0, inf)", help="deformable-attention encoder layers in the pixel decoder")
    mask_dim: int = setting(128, range="[1, inf)", help="channels of the per-pixel mask embeddings")
    pre_norm: bool = setting(False, help="LayerNorm before each decoder block (false: after, Mask2Former's default)")
    roi_classifier: bool = setting(
        False, help="add to each query's class logits those of a Mask R-CNN-style head on a RoIAlign grid of the mask "
        "features and the query's mask inside its mask's box (keeps the region's layout, which attention pools away)")
    roi_size: int = setting(7, range="[1, inf)", help="roi_classifier: RoIAlign grid size S (S x S cells)")
    depth_fusion: DepthFusionConfig = field(default_factory=DepthFusionConfig)
    # losses (Mask2Former defaults)
    class_weight: float = setting(2.0, range="[0, inf)",
                                  help="weight of the classification loss and of its Hungarian matching cost")
    mask_weight: float = setting(5.0, range="[0, inf)",
                                 help="weight of the point-sampled mask BCE loss and of its matching cost")
    dice_weight: float = setting(5.0, range="[0, inf)", help="weight of the dice loss and of its matching cost")
    no_object_weight: float = setting(0.1, range="[0, inf)",
                                      help="cross-entropy weight of the no-object class (unmatched queries)")
    train_num_points: int = setting(12544, range="[1, inf)",
                                    help="points sampled per mask for the mask/dice losses and matching costs")
    oversample_ratio: float = setting(3.0, range="[1, inf)",
                                      help="point sampling: random candidates per kept point, ranked by uncertainty")
    importance_sample_ratio: float = setting(0.75, range="[0, 1]",
        help="point sampling: share of points chosen by uncertainty (rest uniform)")
    activation_checkpointing: bool = setting(
        False, help="recompute the backbone stages' and the pixel decoder's activations in the backward pass "
                    "instead of keeping them (less memory, about one more forward of those parts)")
    deep_supervision: bool = setting(True, help="losses on every decoder layer's predictions, not only the last")


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpoints and logging (supervised and teacher-student)."""

    output_dir: str = setting("runs/demo",
                              help="run folder: checkpoints, metrics.jsonl, config.yaml, curves.png")
    max_iter: int = setting(1000, range="[1, inf)",
                            help="iterations of the whole run (teacher-student: stage A + stage B)")
    batch_size: int = setting(8, range="[1, inf)", help="labelled images per step (global, over all processes)")
    accumulate: int = setting(
        1, range="[1, inf)", help="micro-batches per optimiser step (gradient accumulation): the labelled and the "
        "unlabelled batch are each seen in this many parts and give one update equal to the whole batch's")
    lr: float = setting(1e-4, range="(0, inf)", help="base learning rate of AdamW")
    weight_decay: float = setting(0.05, range="[0, inf)",
                                  help="AdamW weight decay (norm layers and embeddings: the two below)")
    weight_decay_norm: float = setting(0.0, range="[0, inf)",
                                       help="weight decay of normalisation layers (Mask2Former: 0)")
    weight_decay_embed: float = setting(0.0, range="[0, inf)",
                                        help="weight decay of nn.Embedding tables, e.g. the queries (Mask2Former: 0)")
    backbone_lr_mult: float = setting(0.1, range="[0, inf)", help="backbone learning rate = lr x this")
    warmup_iters: int = setting(50, range="[0, inf)",
        help="linear LR warm-up from 0.001 x lr over this many steps, at the start of each stage")
    schedule: Literal["poly", "step"] = setting(
        "poly", help="LR decay over each stage: poly (power 0.9, to 0 at the stage's end) or step (x gamma at steps)")
    steps: list[int] = setting(factory=list, range="[1, inf)",
        help="schedule=step: absolute iterations at which the LR is multiplied by gamma; each stage keeps "
             "those inside it, counted from its start (not with step_fractions)")
    step_fractions: list[float] = setting(factory=list, range="(0, 1)",
        help="schedule=step: milestones as fractions of each stage's length, e.g. [0.889, 0.963] (Mask2Former)")
    gamma: float = setting(0.1, range="(0, 1]", help="schedule=step: LR factor applied at each of train.steps")
    clip_grad: float = setting(0.01, range="[0, inf)",
                               help="clip the full-model gradient norm to this (Mask2Former); 0 = no clipping")
    amp: bool = setting(True, help="bf16 autocast on CUDA (ignored on CPU)")
    checkpoint_period: int = setting(200, range="[0, inf)",
        help="save a checkpoint every this many iterations and at the end; 0 = only at the end")
    keep_checkpoints: int = setting(3, range="[0, inf)",
        help="full checkpoints (with optimiser state) kept in the run folder, newest first; 0 = keep all")
    eval_period: int = setting(200, range="[0, inf)",
        help="evaluate on the val split every this many iterations and at the end; 0 = only at the end")
    log_period: int = setting(10, range="[0, inf)",
        help="write a metrics.jsonl row every this many iterations and at the end; 0 = only at the end")
    seed: int = setting(0, range="[0, inf)", help="seed of model initialisation, data order and augmentation")
    device: str = setting("auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    time_parts: bool = setting(
        False, help="log seconds per part of a teacher-student step (time/<part> in metrics.jsonl; bench step "
                    "--semi); synchronises CUDA at every part's edge, so it slows a GPU run")


@dataclass
class ControllerConfig:
    """Depth Controller: the weight of the depth pseudo-labels in the unsupervised loss."""

    kind: Literal["adaptive", "constant", "scheduled"] = setting(
        "adaptive", help="adaptive (agreement and loss terms), constant (init_weight) or scheduled (cosine ramp)")
    init_weight: float = setting(0.5, range="[0, 1]",
                                 help="weight w of the depth pseudo-label loss at the start (constant: throughout)")
    min_weight: float = setting(0.0, range="[0, 1]", help="adaptive/constant: lowest w")
    max_weight: float = setting(1.0, range="[0, 1]", help="adaptive/constant: highest w")
    momentum: float = setting(0.99, range="[0, 1)",
                              help="adaptive: momentum of the running agreement and loss statistics")
    schedule_iters: int = setting(1000, range="[0, inf)",
                                  help="scheduled: stage-B steps of the cosine ramp from init_weight to final_weight")
    final_weight: float = setting(0.2, range="[0, 1]", help="scheduled: w at and after schedule_iters")
    # adaptive: w = min + (max - min) * sigmoid(logit(u0) - agreement_gain * (agreement - agreement_ref)
    #                                           + loss_gain * log(loss_rgb / loss_depth)), see depth_controller.py
    agreement_gain: float = setting(4.0, range="[0, inf)",
        help="adaptive β: how fast w falls (hands over to RGB) as the two sets agree; 0 = off")
    agreement_ref: float = setting(0.5, range="[0, 1]",
        help="adaptive: agreement at which the agreement term is neutral")
    loss_gain: float = setting(1.0, range="[0, inf)",
                               help="adaptive γ: the set the student fits worse gets less weight; 0 = off")
    agreement_iou: float = setting(0.5, range="[0, 1]",
                                   help="mask IoU above which an RGB and a depth pseudo-label count as one object")
    agreement_class_aware: bool = setting(
        True, help="an RGB-depth match also needs the same class (false: instances only)")


@dataclass
class SemiConfig:
    """Teacher-student training after Guided Distillation, with depth guidance."""

    enabled: bool = setting(False, help="teacher-student training (stage A, then stage B); false = supervised only")
    # Timeline in iterations: stage A = [0, teacher_iters) trains the teacher on labels only;
    # stage B = [teacher_iters, train.max_iter) trains the student on labels + pseudo-labels.
    teacher_iters: int = setting(500, range="[0, inf)",
                                 help="stage A: iterations training the teacher on labels only; stage B is the rest")
    teacher_checkpoint: Optional[str] = setting(
        None, help="skip stage A: stage B starts from this checkpoint's teacher and runs train.max_iter steps")
    student_init: Literal["teacher", "scratch"] = setting(
        "teacher", help="the student starts from the teacher's weights, or afresh (scratch, GD's recipe)")
    burn_in_iter: int = setting(100, range="[0, inf)",
                                help="stage-B steps with a frozen teacher; then teacher := student, then EMA")
    ema_decay: float = setting(0.9996, range="[0, 1]",
                               help="teacher = decay x teacher + (1 - decay) x student after burn-in (1 = frozen)")
    unlabeled_batch_size: int = setting(8, range="[1, inf)", help="unlabelled images per stage-B step")
    unsup_weight: float = setting(2.0, range="[0, inf)", help="weight of the unsupervised (pseudo-label) loss")
    score_threshold: float = setting(
        0.7, range="[0, 1]", help="pseudo-labels keep teacher predictions whose class probability is above this")
    mask_threshold: float = setting(0.5, range="(0, 1)",
                                    help="a pseudo-label mask is where the teacher's mask probability exceeds this")
    min_mask_area: int = setting(5, range="[0, inf)",
                                 help="pseudo-label masks smaller than this many canvas pixels are dropped")
    pseudo_dedup_iou: Optional[float] = setting(
        0.9, range="[0, 1]",
        help="drop a pseudo-label whose mask IoU with a higher-scored one exceeds this; null = keep all")
    ema_buffers: Literal["average", "copy"] = setting(
        "average",
        help="floating-point buffers (norm statistics) of the EMA teacher: averaged, or copied from the student")
    depth_pseudo_labels: bool = setting(
        True,
        help="the teacher also predicts on the depth view: a second pseudo-label set, mixed by the Depth Controller")
    depth_view_weight: float = setting(1.0, range="[0, inf)",
        help="weight of the labelled loss on the depth view, both stages (the RGB view's is 1)")
    controller: ControllerConfig = field(default_factory=ControllerConfig)


@dataclass
class EvalConfig:
    """Inference and COCO evaluation."""

    max_detections: int = setting(100, range="[1, inf)", help="instances kept per image (the best-scored)")
    mask_score_power: float = setting(
        1.0, range="[0, inf)",
        help="an instance scores class probability x mean mask probability ** this (Mask2Former: 1); larger "
             "ranks by mask confidence, for models whose classes are not calibrated yet (README)")
    mask_nms_sigma: float = setting(
        0.0, range="[0, inf)",
        help="Gaussian matrix NMS (SOLOv2) on the masks at inference, class-agnostic; 0 = off (Mask2Former), "
             "SOLOv2 uses 2")
    score_threshold: float = setting(
        0.0, range="[0, 1]",
        help="instances scoring below this are dropped (note: evaluate and training evaluation do not read it yet)")
    batch_size: int = setting(8, range="[1, inf)", help="images per inference batch in evaluation")


@dataclass
class Config:
    """The whole experiment."""

    data: DataConfig = field(default_factory=DataConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
