"""`Predictor`: a checkpoint that segments images in memory (notebooks, services, `cli.py predict`).

    predictor = Predictor.from_run("runs/demo")      # the run's config.yaml and final weights
    result = predictor("photo.jpg")                  # or a PIL image, an (H, W, 3) uint8 array,
                                                     # or a (3, H, W) float tensor in [0, 1]
    result = predictor(rgb, depth=depth_map)         # `files` depth source: the (H, W) map in memory
    result.above(0.5).to_coco(image_id=7)            # COCO results (RLE), as pycocotools' loadRes reads
    result.to_numpy()["masks"]                       # (N, H, W) bool numpy arrays

New images are in no cache, so this runs the depth source itself (a network estimator online, or
the `files` source reading the depth map named by the image's file stem, or the one passed in),
with the cache's normalisation, then the test-time transforms and the model, one image at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from dgseg.pipeline.config import Config
from dgseg.pipeline.engine.checkpoint import load_checkpoint, load_model_state, resolve_checkpoint
from dgseg.pipeline.engine.depth_source import needed_levels
from dgseg.pipeline.engine.distributed import pick_device
from PIL import Image

ImageInput = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]
DepthInput = Union[np.ndarray, torch.Tensor]
WEIGHTS = {"model": "model", "student": "model", "teacher": "teacher"}  # `which` -> checkpoint key


@dataclass
class Categories:
    """The dataset's categories in the model's class order: `ids[k]`, `names[k]` of class k."""

    ids: list[int]
    names: list[str]
    source: Optional[str] = None  # the annotation file they came from (None: numbered 1..K)


@dataclass
class Prediction:
    """One image's instances at its original size, best first.

    masks (N, H, W) bool; scores (N,); labels (N,) contiguous class indices 0..K-1; boxes (N, 4)
    xyxy pixels; `category_ids` / `category_names` name each instance's class in the dataset's terms.
    """

    name: str
    size: tuple[int, int]
    masks: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    categories: Categories = field(repr=False)

    def __len__(self) -> int:
        return int(self.scores.numel())

    @property
    def category_ids(self) -> list[int]:
        return [self.categories.ids[int(k)] for k in self.labels]

    @property
    def category_names(self) -> list[str]:
        return [self.categories.names[int(k)] for k in self.labels]

    def above(self, score_threshold: float) -> Prediction:
        """The instances scoring at least `score_threshold`."""
        keep = self.scores >= score_threshold
        return Prediction(self.name, self.size, self.masks[keep], self.scores[keep], self.labels[keep],
                          self.boxes[keep], self.categories)  # fmt: skip

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The `postprocess` dict (masks, scores, labels, boxes) that evaluation and drawing read."""
        return {"masks": self.masks, "scores": self.scores, "labels": self.labels, "boxes": self.boxes}

    def to_numpy(self) -> dict[str, np.ndarray]:
        """masks (N, H, W) bool, scores (N,) float32, labels (N,) int64, boxes (N, 4) float32 xyxy, and
        category_ids (N,) int64 in the dataset's terms (names: `category_names`)."""
        return {"masks": self.masks.numpy().astype(bool), "scores": self.scores.float().numpy(),
                "labels": self.labels.long().numpy(), "boxes": self.boxes.float().numpy(),
                "category_ids": np.asarray(self.category_ids, dtype=np.int64)}

    def to_coco(self, image_id: int, score_threshold: float = 0.0) -> list[dict]:
        """COCO results (RLE segmentation, the dataset's category ids, score, bbox) as `evaluate` writes."""
        from dgseg.pipeline.evaluation.results import prediction_to_results

        return prediction_to_results(image_id, self.as_dict(), self.categories.ids, score_threshold=score_threshold)


def load_categories(cfg: Config, num_classes: int) -> Categories:
    """Categories from the config's annotation files (val, then train); numbered 1..K when neither is at hand."""
    for path in (cfg.data.val_json, cfg.data.train_json):
        if not path or not Path(path).is_file():
            continue
        try:
            cats = json.loads(Path(path).read_text()).get("categories", [])
            cats = sorted(cats, key=lambda c: c["id"])  # the datasets' contiguous order
            ids, names = [int(c["id"]) for c in cats], [str(c.get("name", c["id"])) for c in cats]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: cannot read its categories ({err})") from err
        if len(ids) != num_classes:
            raise ValueError(f"{path} lists {len(ids)} categories but the model has {num_classes} classes "
                             "(data.num_classes)")  # fmt: skip
        return Categories(ids, names, str(path))
    return Categories(list(range(1, num_classes + 1)), [str(k) for k in range(1, num_classes + 1)])


def to_image_tensor(image: ImageInput) -> torch.Tensor:
    """(3, H, W) float in [0, 1] from a path, a PIL image, an (H, W, 3) uint8 array or such a tensor."""
    from dgseg.pipeline.data.dataset import read_image

    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float().div_(255)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"an image array must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
        return torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(f"an image tensor must be (3, H, W) float in [0, 1], got {image.dtype} "
                             f"{tuple(image.shape)}")  # fmt: skip
        return image.detach().float().cpu()
    raise TypeError(f"cannot read an image from {type(image).__name__}")


class ImageDepth:
    """Depth map and features of one new image, from the configured source."""

    def __init__(self, cfg: Config, levels: list[str], device: torch.device) -> None:
        from dgseg.depth_cache.estimators import build_source
        from dgseg.depth_cache.estimators.files import FilesDepth
        from dgseg.depth_cache.online import OnlineDepth

        est = cfg.depth.estimator
        if est.name == "files":  # its folder may be absent when every depth map is passed in memory
            source = FilesDepth(est.depth_dir or "", est.depth_kind, levels, est.allow_symlinks_outside,
                                must_exist=False)
        else:
            source = build_source(est, levels)
        self.channels = {fi.name: int(fi.channels) for fi in source.feature_info if fi.name in levels}
        self.files = source if isinstance(source, FilesDepth) else None
        self.online = None if self.files else OnlineDepth(source.to(device), cfg.depth.cache.depth_stride)
        self.device = device

    def __call__(self, image: torch.Tensor, stem: Optional[str],
                 raw: Optional[DepthInput] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """image (3, H, W) in [0, 1] -> depth (1, h, w), features {name: (C, h', w')} covering the image.

        `raw`: the `files` source's (H, W) map in memory (of the configured depth_kind) instead of a file."""
        size = tuple(image.shape[-2:])
        if raw is not None:
            if self.files is None:
                raise ValueError("depth= is for the `files` depth source; this run's network estimator computes "
                                 "depth from the image itself")  # fmt: skip
            out = self.files(_depth_map(raw, size))
            return out.depth, {k: v[0] for k, v in out.features.items()}
        if self.files is not None:
            if stem is None:
                raise ValueError("the files depth source reads the depth map named by the image's file stem: "
                                 "pass a path, name= the stem, or depth= the map")  # fmt: skip
            out = self.files(self.files.load(stem, size))
            return out.depth, {k: v[0] for k, v in out.features.items()}
        entry = self.online(image[None].to(self.device))[0]
        return entry.depth.cpu(), {k: v.float().cpu() for k, v in entry.features.items()}


def _depth_map(raw: DepthInput, size: tuple[int, int]) -> torch.Tensor:
    """An in-memory (H, W) depth map as float32, resized bilinearly to the image `size` (as a file's)."""
    import torch.nn.functional as F

    t = torch.from_numpy(np.asarray(raw, dtype=np.float32)) if isinstance(raw, np.ndarray) else raw.detach().float()
    if t.dim() == 3 and 1 in (t.shape[0], t.shape[-1]):
        t = t.reshape(t.shape[1:] if t.shape[0] == 1 else t.shape[:2])
    if t.dim() != 2:
        raise ValueError(f"depth= must be an (H, W) map, got shape {tuple(t.shape)}")
    t = t.cpu()
    if tuple(t.shape) != tuple(size):
        t = F.interpolate(t[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return t


class Predictor:
    """Segment images with a checkpoint's weights.

    Args:
        cfg: the run's config (model, depth source, test size, annotation files for the categories).
        checkpoint: a checkpoint file, or a run folder (its final weights, else its last checkpoint).
        which: "teacher", "student" (= "model", the trained model), or "auto" (the teacher when the
            checkpoint has one).
        device: default `cfg.train.device` ("auto": CUDA when available).
    """

    def __init__(self, cfg: Config, checkpoint: Union[str, Path], which: str = "auto",
                 device: Optional[Union[str, torch.device]] = None) -> None:
        from dgseg.pipeline.data.transforms import build_test_transforms
        from dgseg.pipeline.model.build import build_model

        self.cfg = cfg
        self.device = torch.device(device) if device is not None else pick_device(cfg.train.device)
        self.checkpoint = resolve_checkpoint(checkpoint)
        ckpt = load_checkpoint(self.checkpoint)
        if which != "auto" and which not in WEIGHTS:
            raise ValueError(f"unknown weights {which!r}; choose auto, {', '.join(WEIGHTS)}")
        self.which = which if which != "auto" else ("teacher" if "teacher" in ckpt else "model")
        key = WEIGHTS[self.which]
        if key not in ckpt:
            raise KeyError(f"{self.checkpoint}: has no '{key}' weights (it has: {', '.join(sorted(ckpt))})")
        levels = needed_levels(cfg)
        self.depth = ImageDepth(cfg, levels, self.device) if levels else None
        self.model = build_model(cfg.model, cfg.data.num_classes, self.depth.channels if self.depth else {})
        load_model_state(self.model, ckpt[key], f"{self.checkpoint} [{key}]")
        self.model.to(self.device).eval()
        self.transforms = build_test_transforms(cfg.data.test_size, cfg.data.feature_stride,
                                                cfg.data.test_max_size)
        self.categories = load_categories(cfg, cfg.data.num_classes)

    @classmethod
    def from_run(cls, run_dir: Union[str, Path], which: str = "auto",
                 device: Optional[Union[str, torch.device]] = None) -> Predictor:
        """The predictor of a run folder: its `config.yaml` and its final weights (else last checkpoint)."""
        from dgseg.pipeline.config.loading import load_config

        run = Path(run_dir)
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"{run}: not a run folder (no config.yaml; `train` writes one into "
                                    "train.output_dir)")  # fmt: skip
        return cls(load_config(run / "config.yaml"), run, which, device)

    @torch.no_grad()
    def __call__(self, image: ImageInput, name: Optional[str] = None,
                 depth: Optional[DepthInput] = None) -> Prediction:  # fmt: skip
        """Instances of one image (path, PIL image, (H, W, 3) uint8 array or (3, H, W) float tensor).

        `name`: what the result is called (default: the file stem, else "image"); the `files` depth
        source reads the depth map of that stem, unless `depth` gives the (H, W) map itself (numpy or
        torch, of the configured `depth_kind`; resized to the image if its size differs)."""
        from dgseg.pipeline.data.collate import collate
        from dgseg.pipeline.data.sample import new_sample
        from dgseg.pipeline.engine.inference import postprocess_outputs

        if name is None and isinstance(image, (str, Path)):
            name = Path(image).stem
        tensor = to_image_tensor(image)
        if depth is not None and self.depth is None:
            raise ValueError("depth= given, but this model reads no depth (its config has no depth inputs)")
        depth, feats = self.depth(tensor, name, depth) if self.depth is not None else (None, {})
        sample = self.transforms(new_sample(tensor, depth=depth, features=feats, image_id=name or "image"))
        batch = collate([sample]).to(self.device)
        outputs = self.model(batch.images, batch.features if self.depth is not None else None, ~batch.valid)
        size = tuple(tensor.shape[-2:])
        pred = postprocess_outputs(outputs, [sample.size], [size], self.cfg.eval, self.model.mask_stride)[0]
        pred = {k: v.cpu() for k, v in pred.items()}
        return Prediction(name or "image", size, pred["masks"], pred["scores"], pred["labels"], pred["boxes"],
                          self.categories)  # fmt: skip
