"""Datasets of stage two: images (+ instances) + the cached depth and features of the same image id.

The datasets read the depth cache through a reader (any object with `.get(image_id: str) ->
entry` having `.depth (1, h, w)`, `.features {name: (C, h, w)}`, `.orig_size (H, W)`, and
`.missing(ids) -> list[str]`, e.g. `depth_cache.reader.CacheReader`) and never build a depth
estimator. Without a reader (`online` or `none` depth mode) samples carry depth None and no
features; the engine fills them in the `online` mode. An entry with a `flipped` entry (a
flip_views cache) also gives the sample the mirrored image's maps (`depth_flip`,
`features_flip`), which the first transform (`HFlip` / `DropFlipView`) consumes.

Everything that can be checked is checked at construction: annotations and image files
(`coco.load_coco`; file names stay inside the image folder), that the cache covers every image
(an error listing the missing ids, or, with `skip_missing_cache`, a warning saying how many
images were dropped), and that every entry was computed from this dataset's file, not another
file with the same id (`CacheReader.check_sources`: one stat per image, a 48 KiB hash when the
file moved or changed).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import torch
from dgseg.depth_cache.images import decode_rgb
from dgseg.pipeline.config import Config
from dgseg.pipeline.data.coco import (
    MAX_LISTED,
    CocoData,
    DataError,
    image_path,
    instance_masks,
    load_coco,
    load_image_list,
)
from dgseg.pipeline.data.sample import Sample, new_sample
from dgseg.pipeline.data.transforms import build_test_transforms, build_train_transforms
from torch.utils.data import Dataset


def read_image(path: Path, expected_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1], decoded exactly as precompute decodes it (`depth_cache.images.decode_rgb`:
    EXIF orientation, 16-bit scaled, CMYK/palette/alpha converted); a corrupt/unreadable file or a size unlike
    its record raises naming the file."""
    try:
        rgb = decode_rgb(path)
    except OSError as err:
        raise DataError(f"{path}: unreadable image ({err.__cause__ or err})") from err
    if expected_size is not None and rgb.shape[:2] != tuple(expected_size):
        raise DataError(f"{path}: image is {rgb.shape[0]}x{rgb.shape[1]} but its record says "
                        f"{expected_size[0]}x{expected_size[1]}")  # fmt: skip
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)


class _CachedImages(Dataset):
    """Image records + an optional cache reader; shared by the labelled and unlabelled datasets."""

    def __init__(self, image_dir: Path, images: list[dict], source: Path, transforms: Optional[Callable],
                 reader: Any, skip_missing_cache: bool, feature_levels: Optional[Sequence[str]],
                 allow_symlinks: bool = False):  # fmt: skip
        self.image_dir, self.source, self.transforms = Path(image_dir), Path(source), transforms
        self.reader = reader
        self.feature_levels = None if feature_levels is None else list(feature_levels)
        # resolved once, through the one check that a file_name stays inside image_dir
        self.paths = {r["id"]: image_path(self.image_dir, r, self.source, i, allow_symlinks)
                      for i, r in enumerate(images)}  # fmt: skip
        self.images = self._covered(images, skip_missing_cache) if reader is not None else images
        if reader is not None:
            self._check_sources()

    def _check_sources(self) -> None:
        """Every cached entry must have been computed from this dataset's file (ids collide across datasets)."""
        check = getattr(self.reader, "check_sources", None)
        if check is None:  # a reader without fingerprints (tests' stand-ins)
            return
        problems, unbound = check({str(r["id"]): str(self.paths[r["id"]]) for r in self.images})
        if problems:
            shown = "\n  ".join(problems[:MAX_LISTED]) + ("\n  ..." if len(problems) > MAX_LISTED else "")
            raise DataError(
                f"{self.source}: {len(problems)} of {len(self.images)} images are not the files their depth cache "
                f"entries were computed from (their ids collide with another dataset's, or the files changed):\n  "
                f"{shown}\nimage ids must be unique among all images that share a cache root; renumber them and "
                "run precompute-depth again"
            )
        if unbound:
            warnings.warn(f"{self.source}: {unbound} of {len(self.images)} cache entries were made before entries "
                          "recorded their source file, so a collision of image ids cannot be detected; "
                          "re-create the cache to have them checked", stacklevel=3)  # fmt: skip

    def _covered(self, images: list[dict], skip: bool) -> list[dict]:
        missing = set(self.reader.missing([str(r["id"]) for r in images]))
        if not missing:
            return images
        listed = sorted(missing)
        shown = ", ".join(listed[:MAX_LISTED]) + (", ..." if len(listed) > MAX_LISTED else "")
        if not skip:
            raise DataError(
                f"{self.source}: {len(missing)} of {len(images)} images have no depth cache entry "
                f"(ids {shown}); run precompute-depth on them, or set data.skip_missing_cache=true to skip them"
            )
        kept = [r for r in images if str(r["id"]) not in missing]
        warnings.warn(f"{self.source}: skipping {len(missing)} of {len(images)} images without a depth cache entry "
                      f"(ids {shown})", stacklevel=3)  # fmt: skip
        if not kept:
            raise DataError(f"{self.source}: no image has a depth cache entry")
        return kept

    def __len__(self) -> int:
        return len(self.images)

    def _depth(self, rec: dict) -> dict[str, Any]:
        """`new_sample` keyword arguments: depth, features and, from a flip_views cache, their mirrored view."""
        if self.reader is None:
            return {}
        entry = self.reader.get(str(rec["id"]))
        size = (rec["height"], rec["width"])
        if tuple(entry.orig_size) != size:
            raise DataError(f"depth cache entry of image id {rec['id']} ({rec['file_name']}) is for a "
                            f"{tuple(entry.orig_size)} image, but the image is {size}: a stale cache?")  # fmt: skip
        features = dict(entry.features)
        if self.feature_levels is not None:
            absent = [k for k in self.feature_levels if k not in features]
            if absent:
                raise DataError(f"depth cache entry of image id {rec['id']} lacks feature level(s) {absent} "
                                f"(it has {sorted(features)})")  # fmt: skip
            features = {k: features[k] for k in self.feature_levels}
        out = {"depth": entry.depth, "features": features}
        flipped = getattr(entry, "flipped", None)  # readers of caches without flipped views may lack it
        if flipped is not None:
            out.update(depth_flip=flipped.depth, features_flip={k: flipped.features[k] for k in features})
        return out

    def _sample(self, rec: dict, masks=None, labels=None) -> Sample:
        image = read_image(self.paths[rec["id"]], (rec["height"], rec["width"]))
        sample = new_sample(image, masks, labels, image_id=str(rec["id"]), **self._depth(rec))
        return self.transforms(sample) if self.transforms is not None else sample


class InstanceDataset(_CachedImages):
    """Labelled images: `ds[i] -> Sample` with masks (N, H, W) and contiguous labels (crowd excluded)."""

    def __init__(self, image_dir: Path, ann_file: Path, transforms: Optional[Callable] = None, reader: Any = None,
                 skip_missing_cache: bool = False, feature_levels: Optional[Sequence[str]] = None,
                 allow_symlinks: bool = False):  # fmt: skip
        self.data: CocoData = load_coco(Path(ann_file), Path(image_dir), allow_symlinks)
        super().__init__(image_dir, self.data.images, ann_file, transforms, reader, skip_missing_cache, feature_levels,
                         allow_symlinks)  # fmt: skip

    @property
    def num_classes(self) -> int:
        return len(self.data.categories)

    @cached_property
    def coco(self):
        """The annotations as a pycocotools `COCO` (ground truth for `COCOeval`)."""
        import contextlib
        import io

        from pycocotools.coco import COCO

        gt = COCO()
        gt.dataset = self.data.raw
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            gt.createIndex()
        return gt

    def __getitem__(self, index: int) -> Sample:
        rec = self.images[index]
        masks, labels = instance_masks(self.data, rec)
        return self._sample(rec, torch.from_numpy(masks), torch.from_numpy(labels))


class UnlabeledDataset(_CachedImages):
    """Unlabelled images from a `make-splits` image list: `ds[i] -> Sample` with no instances."""

    def __init__(self, image_dir: Path, list_file: Path, transforms: Optional[Callable] = None, reader: Any = None,
                 skip_missing_cache: bool = False, feature_levels: Optional[Sequence[str]] = None,
                 allow_symlinks: bool = False):  # fmt: skip
        images = load_image_list(Path(list_file), Path(image_dir), allow_symlinks)
        super().__init__(image_dir, images, list_file, transforms, reader, skip_missing_cache, feature_levels,
                         allow_symlinks)  # fmt: skip

    def __getitem__(self, index: int) -> Sample:
        return self._sample(self.images[index])


def feature_levels(cfg: Config) -> Optional[list[str]]:
    """The cached levels Depth Fusion reads (None when fusion is off: keep whatever the cache holds)."""
    fusion = cfg.model.depth_fusion
    return sorted(set(fusion.sources.values())) if fusion.enabled else None


def _check_classes(ds: InstanceDataset, cfg: Config) -> InstanceDataset:
    if ds.num_classes != cfg.data.num_classes:
        raise DataError(f"{ds.source}: {ds.num_classes} categories, but data.num_classes is {cfg.data.num_classes}")
    return ds


def train_canvas(d) -> tuple[int, int]:
    """The training canvas (height, width): `data.crop_size` when set, else the square `image_size`."""
    return (int(d.crop_size[0]), int(d.crop_size[1])) if d.crop_size else (d.image_size, d.image_size)


def build_train_dataset(cfg: Config, reader: Any = None) -> InstanceDataset:
    """Labelled training data with flip + large-scale jitter onto the square canvas."""
    d = cfg.data
    t = build_train_transforms(train_canvas(d), d.min_scale, d.max_scale, d.hflip, d.feature_stride)
    ds = InstanceDataset(Path(d.image_dir), Path(d.train_json), t, reader, d.skip_missing_cache, feature_levels(cfg),
                         d.allow_symlinks_outside)  # fmt: skip
    if not any(ds.data.instances(r["id"]) for r in ds.images):
        # every loss would only teach "no object": almost certainly the wrong file or an empty split
        raise DataError(f"{ds.source}: the labelled split has no training annotations ({len(ds.images)} images, "
                        "0 non-crowd instances); check data.train_json (make-splits writes *_labeled.json)")
    return _check_classes(ds, cfg)


def build_unlabeled_dataset(cfg: Config, reader: Any = None) -> UnlabeledDataset:
    """Unlabelled training data, same geometric augmentation (the weak view; `photometric` makes the strong one)."""
    d = cfg.data
    if not d.unlabeled_list:
        raise DataError("data.unlabeled_list is not set: the semi-supervised stage needs an unlabelled image list")
    t = build_train_transforms(train_canvas(d), d.min_scale, d.max_scale, d.hflip, d.feature_stride)
    return UnlabeledDataset(Path(d.image_dir), Path(d.unlabeled_list), t, reader, d.skip_missing_cache,
                            feature_levels(cfg), d.allow_symlinks_outside)  # fmt: skip


def build_val_dataset(cfg: Config, reader: Any = None) -> InstanceDataset:
    """Validation data, short side resized to `test_size` (deterministic); `.coco` is the ground truth."""
    d = cfg.data
    t = build_test_transforms(d.test_size, d.feature_stride, d.test_max_size)
    ds = InstanceDataset(Path(d.val_image_dir), Path(d.val_json), t, reader, d.skip_missing_cache,
                         feature_levels(cfg), d.allow_symlinks_outside)  # fmt: skip
    return _check_classes(ds, cfg)
