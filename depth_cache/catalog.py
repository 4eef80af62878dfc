"""What `cache ls`, `cache info KEY` and `cache verify KEY` report.

Verify reads every finished shard through zarr itself (independent of the fast reader), re-checks
the per-shard checksums recorded at write time, checks every entry is finite and fits its
geometry, and checks the fast reader returns the same tensors as zarr (the flipped views of a
flip_views cache included: same extents as their maps, and returned as `CacheEntry.flipped`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dgseg.depth_cache.entry import dequantise_int8
from dgseg.depth_cache.geometry import Geometry
from dgseg.depth_cache.reader import CacheReader, list_caches
from dgseg.depth_cache.store import FLIP_SUFFIX, REPORT_FILE, CacheStore, array_path, checksum, flip_name, is_flip_name
from tqdm import tqdm


def _du(store: CacheStore, sub: str = "") -> int:
    try:
        return int(store.fs.du(f"{store.path}/{sub}".rstrip("/"), total=True))
    except FileNotFoundError:
        return 0


def _levels(manifest: dict[str, Any]) -> list[str]:
    """The stored feature levels (not depth, not the flipped views)."""
    return [n for n in manifest["map_names"][1:] if not is_flip_name(n)]


def list_summaries(root: str) -> list[dict[str, Any]]:
    """One row per cache under `root`: key, estimator, images, failed, levels, dtype, bytes."""
    rows = []
    for key, manifest in list_caches(root).items():
        store = CacheStore(root, key)
        markers = store.read_markers()
        done = {img[0] for m in markers.values() for img in m["images"]}
        failed = {i for m in markers.values() for i in m.get("failed", {})} - done
        rows.append({
            "key": key, "estimator": manifest["fields"].get("estimator"), "images": len(done),
            "failed": len(failed), "levels": _levels(manifest), "dtype": manifest["storage_dtype"],
            "flip_views": bool(manifest.get("flip_views", False)), "bytes": _du(store),
        })  # fmt: skip
    return rows


def cache_info(root: str, key: str) -> dict[str, Any]:
    """Images, bytes per image per map (stored on disk, and raw at the image's extent; flipped views are
    maps of their own, `<name>@flip`), levels, dtype, source."""
    store = CacheStore(root, key)
    manifest = store.manifest()
    markers = store.read_markers()
    names = manifest["map_names"]
    images = [img for m in markers.values() for img in m["images"]]
    int8 = manifest["storage_dtype"] == "int8"
    itemsize = 1 if int8 else 2
    per_map = {}
    for n in names:
        # chunk files only (c/...), not the array's zarr.json
        stored = _du(store, f"{array_path(n)}/c") + (_du(store, f"{array_path(n, scale=True)}/c") if int8 else 0)
        c = int(manifest["maps"][n]["channels"])
        raw = [c * a * b * itemsize + (4 * c if int8 else 0) for _, _, g in images for a, b in [g[5][names.index(n)]]]
        per_map[n] = {
            "channels": c, "canvas_grid": manifest["maps"][n]["grid"],
            "stored_bytes_per_image": stored / max(1, len(images)),
            "raw_bytes_per_image": float(np.mean(raw)) if raw else 0.0,
        }  # fmt: skip
    report = store.read_json(REPORT_FILE) or {}
    done = {img[0] for img in images}
    failed = {i: why for m in markers.values() for i, why in m.get("failed", {}).items() if i not in done}
    return {
        "key": key, "root": root, "images": len(images), "shards": len(markers), "shard_size": manifest["shard_size"],
        "failed": failed, "levels": _levels(manifest), "flip_views": bool(manifest.get("flip_views", False)),
        "dtype": manifest["storage_dtype"], "canvas": manifest["canvas"],
        "fields": manifest["fields"], "source": manifest.get("source", {}), "maps": per_map,
        "total_bytes": _du(store), "report_images": report.get("images"),
    }  # fmt: skip


@dataclass
class VerifyResult:
    images: int = 0
    shards: int = 0
    problems: list[str] = field(default_factory=list)
    bad_shards: list[int] = field(default_factory=list)  # shards with a problem (what `repair_cache` drops)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_cache(root: str, key: str, progress: bool = True) -> VerifyResult:
    """Every finished entry readable, finite, of the right shape; checksums match; fast reader agrees."""
    store = CacheStore(root, key)
    manifest = store.manifest()
    names, S = manifest["map_names"], int(manifest["shard_size"])
    int8 = manifest["storage_dtype"] == "int8"
    group = store.group()
    reader = CacheReader(root, key)
    result = VerifyResult()
    seen: dict[str, int] = {}
    markers = store.read_markers()
    for shard, marker in tqdm(markers.items(), desc=f"verify {key}", unit="shard", disable=not progress):
        result.shards += 1
        before = len(result.problems)
        slots = [int(s) for _, s, _ in marker["images"]]
        blocks = {}
        for path, want in marker["checksums"].items():
            try:
                blocks[path] = group[path][shard * S : (shard + 1) * S]
            except Exception as err:  # a damaged shard file: report, keep checking the rest
                result.problems.append(f"shard {shard}: {path} unreadable ({type(err).__name__}: {err})")
                continue
            if checksum([blocks[path][s] for s in slots]) != want:
                result.problems.append(f"shard {shard}: checksum of {path} differs from the one written")
        for image_id, s, geo_json in marker["images"]:
            result.images += 1
            if image_id in seen:
                result.problems.append(f"image {image_id}: listed in shards {seen[image_id]} and {shard}")
            seen[image_id] = shard
            result.problems += _check_entry(image_id, int(s), Geometry.from_json(geo_json, names), blocks,
                                            manifest, int8, reader, shard * S + int(s))  # fmt: skip
        if len(result.problems) > before:
            result.bad_shards.append(shard)
    return result


def repair_cache(root: str, key: str, shards: list[int]) -> dict[str, Any]:
    """Drop `shards` (their done markers, index entries and files), so that the next precompute-depth
    recomputes their images; returns the new report. Run it while no precompute job writes the cache."""
    from dgseg.depth_cache.precompute import write_report

    store = CacheStore(root, key)
    store.manifest()  # a missing cache is an error before anything is deleted
    store.drop_shards(shards)
    return write_report(store)


def _check_entry(image_id, s, geo, blocks, manifest, int8, reader, slot) -> list[str]:
    problems, maps = [], {}
    for n in manifest["map_names"]:
        if is_flip_name(n) and geo.extents[n] != geo.extents[n.removesuffix(FLIP_SUFFIX)]:
            problems.append(f"image {image_id}: {n} extent {geo.extents[n]} differs from its unflipped map's")
        block = blocks.get(array_path(n))
        if block is None:
            return problems
        gh, gw = manifest["maps"][n]["grid"]
        h, w = geo.extents[n][::-1] if geo.transposed else geo.extents[n]
        if h > gh or w > gw or h < 1 or w < 1:
            problems.append(f"image {image_id}: {n} extent {geo.extents[n]} outside the canvas grid {(gh, gw)}")
            continue
        data = block[s, :, :h, :w]
        if int8:
            scale = blocks[array_path(n, scale=True)][s]
            if not np.isfinite(scale).all() or (scale <= 0).any():
                problems.append(f"image {image_id}: {n} has a missing or invalid int8 scale")
                continue
            data = dequantise_int8(data, scale)
        elif not np.isfinite(data).all():
            problems.append(f"image {image_id}: {n} has non-finite values")
            continue
        maps[n] = data.swapaxes(-1, -2) if geo.transposed else data
    try:
        entry = reader.get(image_id)
    except Exception as err:
        return problems + [f"image {image_id}: reader failed ({type(err).__name__}: {err})"]
    got = {"depth": entry.depth, **entry.features}
    if entry.flipped is not None:
        got.update({flip_name(k): v for k, v in {"depth": entry.flipped.depth, **entry.flipped.features}.items()})
    elif manifest.get("flip_views", False):
        return problems + [f"image {image_id}: the reader returned no flipped view"]
    for n, want in maps.items():
        if tuple(got[n].shape) != want.shape or not np.allclose(got[n].numpy(), want.astype(np.float32)):
            problems.append(f"image {image_id}: fast reader disagrees with zarr on {n}")
    return problems
