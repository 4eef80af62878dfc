"""Settings of stage one: which estimator produces depth, and how the cache stores it.

Stage one knows nothing of stage two, so its settings live here; `pipeline.config.Config`
embeds them as its `depth` section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class EstimatorConfig:
    """Which depth estimator runs, on what, at which input size."""

    # depth-anything-v2-{vits,vitb,vitl,vitg}, tiny (random-init DAv2 of the same architecture), files
    name: str = "tiny"
    weights: Optional[str] = None  # local checkpoint path (official `depth_anything_v2_*.pth`)
    depth_dir: Optional[str] = None  # `files` source: folder of 16-bit PNG / .npy maps named by image stem
    depth_kind: Literal["depth", "disparity"] = "depth"  # what the `files` maps hold
    input_size: int = 518  # short side of the network input (multiple of the patch size)
    device: str = "auto"  # auto = cuda when present
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto = bf16 on cuda, fp32 on cpu
    seed: int = 0  # random init of `tiny`
    # `files`: accept maps that are symlinks to outside depth_dir (refused by default; not keyed)
    allow_symlinks_outside: bool = False


@dataclass
class CacheConfig:
    """Where and how the cache is stored."""

    root: str = "caches"  # local path or fsspec URL (e.g. s3://bucket/caches, memory://caches)
    levels: list[str] = field(default_factory=lambda: ["path_4"])  # decoder maps to store
    dtype: Literal["fp16", "int8"] = "fp16"
    depth_stride: int = 4  # stored depth resolution = network input / depth_stride
    shard_size: int = 64  # images per shard file (the unit of write ownership)
    batch_size: int = 8  # images per estimator call in precompute
    num_workers: int = 2  # image-decoding DataLoader workers in precompute
    # also store the maps of the horizontally flipped image (`maps/<name>@flip`): a network is not
    # flip-equivariant, so flipping the cached maps only approximates them; costs 2x precompute time
    # and bytes. Network sources only (a flip of `files` maps is exact).
    flip_views: bool = False
    # precompute jobs on one key claim shards with a lease renewed every lease_s/4; a killed job's
    # shards are taken over lease_s after its last heartbeat (not keyed)
    lease_s: float = 120.0


@dataclass
class DepthConfig:
    """Stage one as a whole, plus how stage two obtains depth."""

    # cache: read precomputed maps (no depth inference in training);
    # online: run the estimator inside the training step; none: no depth at all
    mode: Literal["cache", "online", "none"] = "cache"
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
