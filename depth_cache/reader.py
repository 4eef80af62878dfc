"""Stage two's view of a cache: `open_cache(root, estimator_cfg, cache_cfg).get(image_id)`.

`open_cache` recomputes the key from the configs and refuses a cache whose key differs, naming
the fields that differ from the closest cache under the root. The reader is picklable and opens
lazily in each process (DataLoader workers); it reads each image's chunks directly
(`chunks.ShardChunkReader`) and returns every map cropped to the image's extent; a cache with
flip_views also gives the flipped image's maps (`CacheEntry.flipped`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from dgseg.depth_cache.chunks import ShardChunkReader, fast_layout
from dgseg.depth_cache.config import CacheConfig, EstimatorConfig
from dgseg.depth_cache.entry import CacheEntry, dequantise_int8
from dgseg.depth_cache.geometry import Geometry
from dgseg.depth_cache.key import cache_key, diff_fields, key_fields
from dgseg.depth_cache.store import FLIP_SUFFIX, CacheError, CacheStore, array_path, is_flip_name, split_root


class MissingEntryError(KeyError):
    """An image id without a finished entry in the cache."""

    def __str__(self) -> str:
        return str(self.args[0])


class CacheKeyMismatchError(CacheError):
    """No cache under the root matches the configs; the message lists what differs."""


class DamagedShardError(CacheError):
    """A finished entry whose shard cannot be read (cut short, overwritten); the message names the
    cache, the shard file and the image, and says how to find and recompute damaged shards."""


class SourceMismatchError(CacheError):
    """An image id whose cached entry was computed from another file."""


def list_caches(root: str) -> dict[str, dict[str, Any]]:
    """key -> manifest of every cache under `root` (folders with a manifest)."""
    fs, base = split_root(root)
    out = {}
    try:
        entries = fs.ls(base, detail=False)
    except FileNotFoundError:
        return out
    for entry in sorted(entries):
        key = entry.rstrip("/").rsplit("/", 1)[-1]
        try:
            out[key] = CacheStore(root, key).manifest()
        except (CacheError, ValueError, OSError):
            continue
    return out


def open_cache(root: str, estimator_cfg: EstimatorConfig, cache_cfg: CacheConfig) -> CacheReader:
    """The cache made with exactly these settings, or CacheKeyMismatchError saying what differs."""
    wanted = key_fields(estimator_cfg, cache_cfg)
    key = cache_key(wanted)
    store = CacheStore(root, key)
    if store.exists():
        stored = store.manifest()["fields"]
        if stored != wanted:  # a hash collision or a hand-edited manifest
            diff = "; ".join(diff_fields(stored, wanted))
            raise CacheKeyMismatchError(f"cache {key} at {root} differs from the config: {diff}")
        return CacheReader(root, key)
    caches = list_caches(root)
    if not caches:
        raise CacheKeyMismatchError(
            f"no depth cache for key {key} under {root} (the root holds no cache); run `python cli.py precompute-depth`"
        )
    ranked = sorted(caches.items(), key=lambda kv: len(diff_fields(kv[1].get("fields", {}), wanted)))
    lines = [f"  {k}: " + "; ".join(diff_fields(m.get("fields", {}), wanted)) for k, m in ranked[:3]]
    raise CacheKeyMismatchError(
        f"no depth cache for key {key} under {root}; the caches there differ from the config in:\n"
        + "\n".join(lines)
        + "\nrun `python cli.py precompute-depth` with this config, or change the config to match one"
    )


class CacheReader:
    """Random access to the finished entries of one cache. Picklable; opens lazily per process."""

    def __init__(self, root: str, key: str):
        self.root, self.key = root, key
        self._state: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "key": self.key, "_state": None}

    def __repr__(self) -> str:
        return f"CacheReader({self.key} at {self.root})"

    def _open(self) -> dict[str, Any]:
        if self._state is not None:
            return self._state
        store = CacheStore(self.root, self.key)
        manifest = store.manifest()
        names = manifest["map_names"]
        entries: dict[str, tuple[int, Geometry]] = {}
        sources: dict[str, dict[str, Any]] = {}
        S = int(manifest["shard_size"])
        for shard, marker in store.read_markers().items():
            for image_id, local, geo in marker["images"]:
                entries[image_id] = (shard * S + int(local), geo)
            sources.update(marker.get("sources") or {})  # caches made before fingerprints have none
        int8 = manifest["storage_dtype"] == "int8"
        readers = {n: self._map_reader(store, array_path(n)) for n in names}
        scales = {n: self._map_reader(store, array_path(n, scale=True)) for n in names} if int8 else {}
        self._state = {"manifest": manifest, "names": names, "entries": entries, "readers": readers, "scales": scales,
                       "sources": sources}  # fmt: skip
        return self._state

    @staticmethod
    def _map_reader(store: CacheStore, path: str):
        meta = store.array_meta(path)
        layout = fast_layout(meta)
        if layout is None:  # not the layout we write: let zarr read it (slow but right)
            arr = store.group()[path]
            return lambda slot: None if np.isnan(np.asarray(arr[slot], dtype=np.float32)).all() else arr[slot]
        return ShardChunkReader(store.fs, f"{store.path}/{path}", layout, store.local).read

    def _damaged(self, image_id: str, slot: int, name: str, err: BaseException) -> DamagedShardError:
        S = int(self._open()["manifest"]["shard_size"])
        shard = slot // S
        store = CacheStore(self.root, self.key)
        where = store.shard_file(array_path(name), shard, 4)
        return DamagedShardError(
            f"cache {self.key} at {self.root}: shard {shard} is damaged ({where}): reading {name} of image "
            f"{image_id!r} failed ({type(err).__name__}: {err}). Run `python cli.py cache verify {self.key} "
            f"--root {self.root}` to list the damaged shards, `cache verify {self.key} --root {self.root} --repair` "
            "to drop them, then precompute-depth again to recompute their images."
        )

    def source(self, image_id: str) -> dict[str, Any] | None:
        """The fingerprint of the file the entry was computed from (None: not recorded, an older cache)."""
        return self._open()["sources"].get(image_id)

    def check_sources(self, files: dict[str, str]) -> tuple[list[str], int]:
        """For {image id: file} of finished entries: one problem per file that is not the one its entry was
        computed from (naming both files), and how many entries have no recorded fingerprint."""
        from dgseg.depth_cache.fingerprint import check_files

        return check_files(files, self._open()["sources"])

    # ---------------------------------------------------------------- queries
    @property
    def manifest(self) -> dict[str, Any]:
        return self._open()["manifest"]

    @property
    def levels(self) -> list[str]:
        return [n for n in self._open()["names"] if n != "depth" and not is_flip_name(n)]

    @property
    def flip_views(self) -> bool:
        """Whether entries carry the maps of the flipped image (`CacheEntry.flipped`)."""
        return bool(self.manifest.get("flip_views", False))

    def feature_channels(self) -> dict[str, int]:
        """name -> channels of each stored feature level (what a model needs to size its inputs)."""
        maps = self.manifest["maps"]
        return {n: int(maps[n]["channels"]) for n in self.levels}

    def ids(self) -> list[str]:
        return list(self._open()["entries"])

    def __len__(self) -> int:
        return len(self._open()["entries"])

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._open()["entries"]

    def missing(self, ids: list[str]) -> list[str]:
        """The ids (in order) that have no finished entry."""
        entries = self._open()["entries"]
        return [i for i in ids if i not in entries]

    def geometry(self, image_id: str) -> Geometry:
        state = self._open()
        return Geometry.from_json(self._lookup(image_id)[1], state["names"])

    def _lookup(self, image_id: str) -> tuple[int, list]:
        try:
            return self._open()["entries"][image_id]
        except KeyError:
            if not isinstance(image_id, str):
                raise MissingEntryError(f"image id {image_id!r} is not a str; cache ids are strings") from None
            raise MissingEntryError(
                f"image id {image_id!r} has no finished entry in cache {self.key} at {self.root}"
            ) from None

    def get(self, image_id: str) -> CacheEntry:
        """depth (1, h, w) and features {name: (C, h', w')} float32, cropped to the image's extent
        (and `flipped`, the same for the mirrored image, in flip_views caches)."""
        state = self._open()
        slot, geo_json = self._lookup(image_id)
        geo = Geometry.from_json(geo_json, state["names"])
        out = {}
        for name in state["names"]:
            try:
                data = state["readers"][name](slot)
                if data is None:
                    raise OSError("its chunk is missing from the shard file, yet the shard's marker lists it")
                gh, gw = geo.extents[name]
                crop = data[:, :gw, :gh] if geo.transposed else data[:, :gh, :gw]
                if state["scales"]:
                    scale = state["scales"][name](slot)
                    if scale is None:
                        raise OSError("its int8 scale is missing from the shard file")
                    crop = dequantise_int8(crop, scale)
            except Exception as err:  # truncated/garbage shard: OSError, zstd RuntimeError, reshape ValueError
                raise self._damaged(image_id, slot, name, err) from err
            t = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))
            out[name] = t.transpose(-1, -2).contiguous() if geo.transposed else t
        flip = {n.removesuffix(FLIP_SUFFIX): out.pop(n) for n in list(out) if is_flip_name(n)}
        flipped = None
        if flip:
            flipped = CacheEntry(depth=flip.pop("depth"), features=flip, orig_size=geo.orig_size)
        depth = out.pop("depth")
        return CacheEntry(depth=depth, features=out, orig_size=geo.orig_size, flipped=flipped)
