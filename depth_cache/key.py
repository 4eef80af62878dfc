"""The cache key: a hash of everything that produced a cache, so changed settings never reuse it.

The key fields are computed from the configs alone (no estimator is built): the estimator's name
and weights (sha256 of the file; seed and configuration for `tiny`; folder and kind for `files`),
the preprocessing (input size, canvas aspect), the stored levels and dtype, the stored depth
resolution, whether the flipped views are stored, whether JPEGs were decoded by nvjpeg (other pixels
than the host decoders'), and the storage format version. Storage
details that do not change a stored value (shard size, batch size, precision of the matmuls)
are recorded in the manifest, not keyed.
The key reads `<estimator>-<16 hex digits>`, e.g. `tiny-3f2a09c1d4e5b6a7`.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from typing import Any

from dgseg.depth_cache.config import CacheConfig, EstimatorConfig

# Bump when the stored layout or any stored value's definition changes.
FORMAT_VERSION = 1
# Long side of the storage canvas as a multiple of its short side (see geometry.py).
CANVAS_ASPECT = 2.0
NORMALISATION = "per-image p2/p98 clip, min-max to [0,1], 1 = nearest"


@lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """sha256 of a weights file; memoised per (path, size, mtime) since checkpoints reach 1.3 GB."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    st = os.stat(path)
    return _sha256_cached(os.path.abspath(path), st.st_size, st.st_mtime_ns)


def _estimator_fields(cfg: EstimatorConfig) -> dict[str, Any]:
    name = cfg.name
    if name.startswith("depth-anything-v2-"):
        if cfg.weights is None:
            raise ValueError(
                f"estimator {name} needs a weights file (estimator.weights / --weights): a cache of "
                "random weights could not be reproduced; use the `tiny` estimator for tests"
            )
        if os.path.isdir(cfg.weights):  # a Hugging Face folder: its tensors file (config.json only describes them)
            return {"hf_weights_sha256": file_sha256(os.path.join(cfg.weights, "model.safetensors"))}
        return {"weights_sha256": file_sha256(cfg.weights)}
    if name == "tiny":
        from dgseg.depth_cache.estimators.depth_anything_v2 import tiny_fingerprint

        return {"weights": tiny_fingerprint(cfg.seed)}
    if name == "files":
        if cfg.depth_dir is None:
            raise ValueError("estimator `files` needs estimator.depth_dir (--depth-dir)")
        # the folder, not its content: hashing every map would change the key whenever maps are added
        return {"depth_dir": _canonical_dir(cfg.depth_dir), "depth_kind": cfg.depth_kind}
    return {}


def _canonical_dir(path: str) -> str:
    # resolved, so a symlinked or relative spelling of the same folder finds the same cache
    return path if "://" in path else os.path.realpath(path)


def key_fields(estimator_cfg: EstimatorConfig, cache_cfg: CacheConfig) -> dict[str, Any]:
    """Every setting that changes a stored value, as a flat JSON-able dict."""
    fields: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "estimator": estimator_cfg.name,
        "input_size": int(estimator_cfg.input_size),
        "canvas_aspect": CANVAS_ASPECT,
        "levels": list(cache_cfg.levels),
        "dtype": cache_cfg.dtype,
        "depth_stride": int(cache_cfg.depth_stride),
        "normalisation": NORMALISATION,
    }
    if cache_cfg.flip_views:
        if estimator_cfg.name == "files":
            raise ValueError(
                "depth.cache.flip_views is for network estimators: a flip of `files` maps is exact "
                "(stage two flips the cached maps), so storing the flipped view would only double the cache"
            )
        # keyed only when on, so the keys of caches made before the option existed stay valid
        fields["flip_views"] = True
    if cache_cfg.decode == "nvjpeg":
        # nvjpeg's pixels differ from libjpeg-turbo's (the other decoders); keyed only then, so earlier keys stay
        fields["jpeg_decoder"] = "nvjpeg"
    fields.update(_estimator_fields(estimator_cfg))
    return fields


def cache_key(fields: dict[str, Any]) -> str:
    """`<estimator>-<first 16 hex digits of sha256(fields as sorted JSON)>`."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return f"{fields.get('estimator', 'cache')}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def diff_fields(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Human-readable differences, one per field: `levels: cache ['path_4'] != config ['path_3']`."""
    out = []
    for name in sorted(set(stored) | set(wanted)):
        a, b = stored.get(name, "<absent>"), wanted.get(name, "<absent>")
        if a != b:
            out.append(f"{name}: cache {a!r} != config {b!r}")
    return out
