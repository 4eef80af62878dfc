"""`cache export --format hdf5`: one portable file holding a cache's finished entries.

Export rather than a second backend: the training reader stays one code path (kept fast and
checked by `cache verify`), and Zarr alone gives what a shared cache needs (object storage,
several writers on disjoint shards, resumable shard-wise writes); HDF5 has none of these, but
is one file that any tool (h5py, MATLAB, HDFView) opens.

Layout: attrs `manifest` (JSON) and `key`; `ids` (N,) str; `geometry` (N, 5) int32 (H, W, frame
h, frame w, transposed); `extents/<map>` (N, 2) int32 (image orientation); `maps/<map>` (N, C, Gh,
Gw) on the storage canvas (lzf, one chunk per image); `scales/<map>` (N, C) for int8 caches.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from dgseg.depth_cache.geometry import Geometry
from dgseg.depth_cache.store import CacheStore, array_path
from tqdm import tqdm


def export_hdf5(root: str, key: str, out: str | Path, progress: bool = True) -> dict:
    """Write the finished entries of cache `key` to `out`; returns {path, images}."""
    store = CacheStore(root, key)
    manifest = store.manifest()
    names, S = manifest["map_names"], int(manifest["shard_size"])
    int8 = manifest["storage_dtype"] == "int8"
    markers = store.read_markers()
    n = sum(len(m["images"]) for m in markers.values())
    group = store.group()
    paths = [array_path(m) for m in names] + ([array_path(m, scale=True) for m in names] if int8 else [])
    with h5py.File(out, "w") as f:
        f.attrs["key"] = key
        f.attrs["manifest"] = json.dumps(manifest)
        ids = f.create_dataset("ids", (n,), dtype=h5py.string_dtype())
        geometry = f.create_dataset("geometry", (n, 5), dtype="int32")
        extents = {m: f.create_dataset(f"extents/{m}", (n, 2), dtype="int32") for m in names}
        data = {}
        for p in paths:
            arr = group[p]
            data[p] = f.create_dataset(p, (n, *arr.shape[1:]), dtype=arr.dtype, chunks=(1, *arr.shape[1:]),
                                       compression="lzf")  # fmt: skip
        row = 0
        for shard, marker in tqdm(markers.items(), desc=f"export {key}", unit="shard", disable=not progress):
            blocks = {p: group[p][shard * S : (shard + 1) * S] for p in paths}
            for image_id, s, geo_json in marker["images"]:
                geo = Geometry.from_json(geo_json, names)
                ids[row] = image_id
                geometry[row] = [*geo.orig_size, *geo.frame_size, int(geo.transposed)]
                for m in names:
                    extents[m][row] = geo.extents[m]
                for p in paths:
                    data[p][row] = blocks[p][int(s)]
                row += 1
    return {"path": str(out), "images": n}


def read_hdf5_entry(path: str | Path, image_id: str) -> dict[str, np.ndarray]:
    """One image's maps from an exported file, cropped to its extent (float32; for checks and other tools)."""
    with h5py.File(path, "r") as f:
        ids = [i.decode() if isinstance(i, bytes) else i for i in f["ids"][:]]
        row = ids.index(image_id)
        transposed = bool(f["geometry"][row][4])
        out = {}
        for m in f["maps"]:
            h, w = f[f"extents/{m}"][row]
            a = f[f"maps/{m}"][row][:, : (w if transposed else h), : (h if transposed else w)].astype(np.float32)
            if "scales" in f:
                a = a * f[f"scales/{m}"][row].reshape(-1, 1, 1)
            out[m] = a.swapaxes(-1, -2) if transposed else a
        return out
