"""The `files` depth source: depth or disparity maps already on disk instead of a network.

Maps are 16-bit PNGs (or any single-channel image PIL reads) or `.npy` arrays named by the image's
file stem (`depth_dir/<stem>.png|.npy`), e.g. the generated dataset's true depth, Cityscapes
disparity or sensor depth. Values <= 0 or non-finite are invalid (no measurement) and become the
farthest valid value. Metric depth (`kind="depth"`, far = large) is inverted (1/d) first, so the
result follows the project's convention (normalised per image to [0, 1], 1 = nearest).

No resize beyond two documented cases: a map whose size differs from its image is resized to the
image bilinearly, and the precompute job shrinks maps larger than its canvas (area average).
"Features" are a depth pyramid: level `depth_s{k}` is the normalised depth averaged over k x k
cells (stride k w.r.t. the map; adaptive cells when k does not divide the size), 1 channel.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from dgseg.depth_cache.entry import normalise_depth, pool_to_stride
from dgseg.depth_cache.estimators.base import DepthOutput, FeatureInfo
from PIL import Image

LEVEL_RE = re.compile(r"^depth_s(\d+)$")
SUFFIXES = (".npy", ".png", ".tif", ".tiff")


def parse_levels(levels: list[str]) -> list[FeatureInfo]:
    """`depth_s{k}` names -> FeatureInfo(name, 1, k); anything else is an error naming the valid form."""
    out = []
    for name in levels:
        m = LEVEL_RE.match(name)
        if m is None or int(m.group(1)) < 1:
            raise ValueError(f"files source: unknown level {name!r}; its levels are depth_s<stride>, e.g. depth_s8")
        out.append(FeatureInfo(name, 1, int(m.group(1))))
    return out


def read_depth_file(path: str | Path) -> np.ndarray:
    """(H, W) float32 map from a .npy or a single-channel image; errors name the file."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                arr = np.asarray(im)
    except Exception as err:
        raise OSError(f"{path}: cannot read depth map ({type(err).__name__}: {err})") from err
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{path}: depth map must be single-channel (H, W), got shape {arr.shape}")
    return arr.astype(np.float32)


class FilesDepth:
    """Depth from files. `find(stem)` locates a map, `load(stem, size)` reads it at the image size,
    `__call__(map (H, W)) -> DepthOutput(depth (1, H, W) normalised, {depth_s{k}: (1, 1, H/k, W/k)})`."""

    name = "files"
    multiple_of = 1

    def __init__(self, depth_dir: str | Path, kind: Literal["depth", "disparity"], levels: list[str],
                 allow_symlinks: bool = False, must_exist: bool = True):  # fmt: skip
        """`must_exist=False`: the folder may be absent (maps passed in memory; `find` then names it)."""
        if kind not in ("depth", "disparity"):
            raise ValueError(f"files source: depth_kind must be 'depth' or 'disparity', got {kind!r}")
        self.depth_dir = Path(depth_dir)
        if must_exist and not self.depth_dir.is_dir():
            raise ValueError(f"files source: depth folder not found: {self.depth_dir}")
        self.kind, self.allow_symlinks = kind, allow_symlinks
        self.feature_info = parse_levels(levels)

    def find(self, stem: str) -> Path:
        from dgseg.depth_cache.images import resolve_in_folder

        for suffix in SUFFIXES:
            name = f"{stem}{suffix}"
            path = resolve_in_folder(self.depth_dir, name, where=f"files source: depth map {name}",
                                     allow_symlinks=self.allow_symlinks)  # fmt: skip
            if path.is_file():
                return path
        raise FileNotFoundError(f"files source: no depth map {stem}{{{','.join(SUFFIXES)}}} in {self.depth_dir}")

    def load(self, stem: str, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The raw map for image `stem` as (H, W) float32, resized bilinearly to `size` if it differs."""
        raw = torch.from_numpy(read_depth_file(self.find(stem)))
        if size is not None and tuple(raw.shape) != tuple(size):
            raw = F.interpolate(raw[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
        return raw

    def inverse_depth(self, raw: torch.Tensor) -> torch.Tensor:
        """(H, W) raw map -> inverse depth (larger = nearer); invalid pixels become the farthest valid value."""
        valid = torch.isfinite(raw) & (raw > 0)
        if not bool(valid.any()):
            raise ValueError("files source: depth map has no valid (positive, finite) pixel")
        inv = torch.where(valid, 1.0 / raw.clamp_min(1e-12), raw) if self.kind == "depth" else raw.clone()
        far = inv[valid].min()
        return torch.where(valid, inv, far)

    def __call__(self, raw: torch.Tensor) -> DepthOutput:
        return self.from_inverse(self.inverse_depth(raw.float()))

    def from_inverse(self, inv: torch.Tensor) -> DepthOutput:
        """(H, W) inverse depth -> normalised depth (1, H, W) and its pyramid."""
        depth = normalise_depth(inv)
        features = {fi.name: pool_to_stride(depth, fi.stride)[None, None] for fi in self.feature_info}
        return DepthOutput(depth=depth[None], features=features)
