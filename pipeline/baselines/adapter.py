"""The project's labelled data as torchvision detection inputs and targets (the anchor's data path).

The datasets are the project's own `InstanceDataset` (same COCO loading, contiguous labels and
depth cache reader as training), with the anchor's augmentation: a horizontal flip, then the cached
depth brought to the image's resolution (`MatchResolution`); no scale jitter, since torchvision's
transform resizes to `min_size`/`max_size` itself. One sample becomes:
- input (C, H, W) float: `rgb` the image in [0, 1]; `depth` the depth map min-max normalised per
  image to [0, 1], replicated to 3 channels; `rgbd` the image with that map as a 4th channel;
- target {boxes (N, 4) float xyxy: each mask's tight box in pixel edges, labels (N,) int64 =
  contiguous class + 1 (torchvision keeps 0 for the background), masks (N, H, W) uint8};
  instances whose mask is empty are dropped (they have no box).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from dgseg.pipeline.baselines.maskrcnn import check_mode
from dgseg.pipeline.config import Config
from dgseg.pipeline.data.coco import DataError
from dgseg.pipeline.data.dataset import InstanceDataset
from dgseg.pipeline.data.sample import Sample
from dgseg.pipeline.data.transforms import Compose, DropFlipView, HFlip, MatchResolution


def needs_depth(mode: str) -> bool:
    check_mode(mode)
    return mode != "rgb"


def minmax(depth: torch.Tensor) -> torch.Tensor:
    """(1, H, W) depth rescaled to [0, 1] over the image (all zeros when the map is flat)."""
    lo, hi = depth.amin(), depth.amax()
    if float(hi - lo) <= 1e-12:
        return torch.zeros_like(depth)
    return (depth - lo) / (hi - lo)


def anchor_input(sample: Sample, mode: str) -> torch.Tensor:
    """The model input of one sample in `mode` (see the module docstring)."""
    if not needs_depth(mode):
        return sample.image
    if sample.depth is None:
        raise DataError(f"sample {sample.image_id!r}: the anchor's {mode!r} mode needs depth, but it has none")
    if tuple(sample.depth.shape[-2:]) != sample.size:
        raise DataError(f"sample {sample.image_id!r}: depth {tuple(sample.depth.shape[-2:])} is not at the "
                        f"image's resolution {sample.size} (the transforms must end with MatchResolution)")
    depth = minmax(sample.depth.float())
    if mode == "depth":
        return depth.expand(3, -1, -1).contiguous()
    return torch.cat([sample.image, depth], dim=0)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) float xyxy covering every mask pixel (x1 = last column + 1)."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    for i, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if ys.numel():
            boxes[i] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return boxes


def anchor_target(sample: Sample) -> dict[str, torch.Tensor]:
    """torchvision's target of one sample (see the module docstring)."""
    keep = sample.masks.flatten(1).any(dim=1)
    masks = sample.masks[keep]
    return {"boxes": masks_to_boxes(masks), "labels": sample.labels[keep].to(torch.int64) + 1,
            "masks": masks.to(torch.uint8)}  # fmt: skip


def anchor_collate(samples: list[Sample], mode: str) -> tuple[list[torch.Tensor], list[dict], list[str]]:
    """(inputs, targets, image ids): torchvision detection models take lists, so nothing is padded."""
    return ([anchor_input(s, mode) for s in samples], [anchor_target(s) for s in samples],
            [s.image_id for s in samples])  # fmt: skip


def _dataset(cfg: Config, image_dir: str, ann: str, train: bool, reader: Any) -> InstanceDataset:
    d = cfg.data
    steps = [HFlip(0.5) if (train and d.hflip) else DropFlipView(), MatchResolution(d.feature_stride)]
    # no feature levels: the anchor reads only the depth map of each cache entry
    ds = InstanceDataset(Path(image_dir), Path(ann), Compose(steps), reader, d.skip_missing_cache, feature_levels=[])
    if ds.num_classes != d.num_classes:
        raise DataError(f"{ann}: {ds.num_classes} categories, but data.num_classes is {d.num_classes}")
    return ds


def anchor_datasets(cfg: Config, reader: Optional[Any]) -> tuple[InstanceDataset, InstanceDataset]:
    """(train, val) datasets of the config's labelled data; `reader` (None for RGB) supplies depth."""
    d = cfg.data
    return (_dataset(cfg, d.image_dir, d.train_json, True, reader),
            _dataset(cfg, d.val_image_dir, d.val_json, False, reader))  # fmt: skip
