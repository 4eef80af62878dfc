"""Settings of stage one: which estimator produces depth, and how the cache stores it.

Stage one knows nothing of stage two, so its settings live here; `pipeline.config.Config`
embeds them as its `depth` section. Each field carries the same metadata as the fields of
`pipeline/config/schema.py` (a one-line `help`; for numbers a `range` interval such as "[1, inf)"),
which `pipeline.config.loading` checks at load time and `cli.py config show` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Optional


def setting(default: Any = None, *, help: str, range: Optional[str] = None,  # noqa: A002 - the natural names
            factory: Optional[Callable[[], Any]] = None) -> Any:
    """A dataclass field with its one-line meaning and, for numbers, its valid interval.

    Stage two declares its fields with this helper too (`pipeline.config` imports it: the cache's
    layer is the lower one)."""
    meta = {"help": help} if range is None else {"help": help, "range": range}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class EstimatorConfig:
    """Which depth estimator runs, on what, at which input size."""

    name: str = setting(
        "tiny",
        help="depth source: depth-anything-v2-{vits,vitb,vitl,vitg}, tiny (random-init DAv2, for tests) or files")
    weights: Optional[str] = setting(
        None, help="local weights of a DAv2 estimator: the official depth_anything_v2_*.pth, or a Hugging Face "
        "model folder (config.json + model.safetensors, e.g. Depth-Anything-V2-Small-hf)")
    depth_dir: Optional[str] = setting(
        None, help="files source: folder of 16-bit PNG / .npy depth maps named by image stem")
    depth_kind: Literal["depth", "disparity"] = setting(
        "depth", help="files source: what the maps hold (depth: far = larger; disparity: near = larger)")
    input_size: int = setting(
        518, range="[1, inf)",
        help="short side of the network input (DAv2: a multiple of 14, 518 official); files: of the stored maps")
    device: str = setting("auto", help="where the estimator runs: auto (cuda when present), cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting(
        "auto", help="estimator arithmetic: auto = bf16 on cuda, fp32 on cpu")
    seed: int = setting(0, range="[0, inf)", help="tiny source: seed of its random initialisation")
    allow_symlinks_outside: bool = setting(
        False, help="files source: accept depth maps that are symlinks to outside depth_dir (not keyed)")
    # not keyed: the stored values agree with the eager ones to the precision's rounding
    compile: bool = setting(
        False, help="torch.compile the estimator in precompute (NOTES, H200: 1.7x vits, 1.5x vitl at 518x686; "
                    "compiling takes ~20 s per input shape)")


@dataclass
class CacheConfig:
    """Where and how the cache is stored."""

    root: str = setting(
        "caches", help="cache root: a folder or an fsspec URL (s3://bucket/caches); one sub-folder per cache key")
    levels: list[str] = setting(
        factory=lambda: ["path_4"],
        help="maps stored besides depth: DAv2/tiny decoder maps path_1..path_4, or files' pyramid depth_s{k}")
    dtype: Literal["fp16", "int8"] = setting(
        "fp16", help="stored precision of the maps (int8: one scale per channel, about half the bytes)")
    depth_stride: int = setting(
        4, range="[1, inf)", help="stored depth resolution = network input / depth_stride")
    shard_size: int = setting(
        64, range="[1, inf)", help="images per shard file (the unit of writing and of resuming a killed job)")
    batch_size: int = setting(8, range="[1, inf)", help="images per estimator call in precompute")
    num_workers: Optional[int] = setting(
        None, range="[0, inf)",
        help="image-reading/decoding DataLoader workers in precompute; null = from the cores (on CUDA all of "
             "the process's cores but one, at most 16; on a CPU half of them)")
    # keyed only for nvjpeg: torchvision and pil give the same pixels on every host
    decode: Literal["torchvision", "pil", "nvjpeg"] = setting(
        "torchvision",
        help="JPEG decoder: torchvision (libjpeg-turbo in the loader workers; other formats via PIL), pil (every "
             "image via PIL; the same pixels) or nvjpeg (batched on the estimator's GPU: faster, other pixels, "
             "so its own cache key)")
    writer_threads: int = setting(
        2, range="[1, inf)", help="threads packing and writing finished shards (each holds one shard's maps in memory)")
    # a network is not flip-equivariant, so flipping the cached maps only approximates them; costs
    # 2x precompute time and bytes. Network sources only (a flip of `files` maps is exact).
    flip_views: bool = setting(
        False, help="also store the maps of the horizontally flipped image (maps/<name>@flip) for exact flips")
    lease_s: float = setting(
        120.0, range="(0, inf)",
        help="precompute jobs on one key claim shards with a lease renewed every lease_s/4; a killed job's "
             "shards are taken over lease_s after its last heartbeat (not keyed)")


@dataclass
class DepthConfig:
    """Stage one as a whole, plus how stage two obtains depth."""

    mode: Literal["cache", "online", "none"] = setting(
        "cache",
        help="cache: read precomputed maps (no depth inference in training); online: run the estimator "
             "in each step; none: no depth")
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
