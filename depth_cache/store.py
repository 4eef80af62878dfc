"""The on-disk layout of one cache: a Zarr v3 group per key, sharded arrays, per-shard done markers.

```
<root>/<key>/zarr.json            group; attributes["dgseg_cache"] = the manifest (key fields, layout)
<root>/<key>/maps/<name>/         one array per stored map ("depth", "path_4", ... ):
                                  (slots, C, Gh, Gw), inner chunk = one image, shard = shard_size images
<root>/<key>/maps/<name>@flip/    flip_views caches: the maps of the horizontally flipped image, same
                                  shape and geometry (in the flipped image's coordinates)
<root>/<key>/scales/<name>/       int8 caches only: (slots, C) float32 per-channel scales
<root>/<key>/shards/<k>.json      done marker of shard k: its images, their geometry, checksums
<root>/<key>/index.json           all markers merged (written at the end of a job; a fast open)
<root>/<key>/report.json          images finished and images that failed, with the reason
```

A shard is written once, from a full buffer (zarr rewrites the whole shard on every partial
write), and its marker is written after its data: an entry counts as finished only when a
marker lists it, so a job killed mid-write leaves nothing a reader could take for finished, and
the next job rewrites that shard whole. Unwritten slots read as the fill value (NaN for fp16).
Arrays have a fixed huge first dimension so that adding images never resizes them (a resize
rewrites metadata that concurrent writers would race on).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import fsspec
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import ZstdCodec

CAPACITY = 2**31  # slots per array; only written shards take space
MANIFEST_ATTR = "dgseg_cache"
MARKER_DIR = "shards"
INDEX_FILE = "index.json"
REPORT_FILE = "report.json"
ZSTD_LEVEL = 1  # fp16 maps barely compress (NOTES: ~1.1x); level 1 keeps writing cheap


class CacheError(RuntimeError):
    """A cache that is missing, malformed or inconsistent (the message names the cache)."""


def split_root(root: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path of a cache root: a local path or any fsspec URL (file://, memory://, s3://...)."""
    fs, path = fsspec.core.url_to_fs(root)
    return fs, path.rstrip("/") if path != "/" else path


FLIP_SUFFIX = "@flip"


def flip_name(name: str) -> str:
    """The stored name of the flipped view of map `name` (`path_4` -> `path_4@flip`)."""
    return name + FLIP_SUFFIX


def is_flip_name(name: str) -> bool:
    return name.endswith(FLIP_SUFFIX)


def array_path(name: str, scale: bool = False) -> str:
    return f"{'scales' if scale else 'maps'}/{name}"


def checksum(blocks: list[np.ndarray]) -> str:
    """sha256 over the raw bytes of the stored values, in order (recorded per shard, re-checked by verify)."""
    digest = hashlib.sha256()
    for b in blocks:
        digest.update(np.ascontiguousarray(b).tobytes())
    return digest.hexdigest()


def create_exclusive(store: CacheStore, path: str, data: bytes) -> bool | None:
    """Create file `path` with `data` unless it exists: True when this call created it, False when it
    existed; None when the store offers no exclusive create (then the file was written if absent,
    and the caller must read it back to know whether its write is the one that stayed)."""
    fs = store.fs
    if store.local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)  # atomic and complete: the file appears with its content or not at all
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError, TypeError):
        pass
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return None


class CacheStore:
    """One cache (`root`/`key`): create it, write shards and markers, read markers and the manifest."""

    def __init__(self, root: str, key: str):
        self.root, self.key = root, key
        self.fs, base = split_root(root)
        self.path = f"{base}/{key}" if base else key
        self.local = isinstance(self.fs, LocalFileSystem)
        self._group: zarr.Group | None = None

    def __repr__(self) -> str:
        return f"cache {self.key} at {self.root}"

    # ------------------------------------------------------------------ zarr
    def _zarr_store(self):
        if self.local:
            return zarr.storage.LocalStore(self.path)
        return zarr.storage.FsspecStore.from_url(f"{self.fs.unstrip_protocol(self.path)}")

    def exists(self) -> bool:
        return self.fs.exists(f"{self.path}/zarr.json")

    def create(self, manifest: dict[str, Any]) -> None:
        """Create the group and its (empty) arrays; `manifest["maps"]` gives channels and grid per map."""
        group = zarr.open_group(store=self._zarr_store(), mode="w", zarr_format=3)
        S = int(manifest["shard_size"])
        int8 = manifest["storage_dtype"] == "int8"
        for name, spec in manifest["maps"].items():
            c, (gh, gw) = int(spec["channels"]), spec["grid"]
            group.create_array(
                array_path(name), shape=(CAPACITY, c, gh, gw), chunks=(1, c, gh, gw), shards=(S, c, gh, gw),
                dtype="int8" if int8 else "float16", compressors=ZstdCodec(level=ZSTD_LEVEL),
                fill_value=0 if int8 else np.nan,
            )  # fmt: skip
            if int8:
                group.create_array(
                    array_path(name, scale=True), shape=(CAPACITY, c), chunks=(1, c), shards=(S, c),
                    dtype="float32", compressors=ZstdCodec(level=ZSTD_LEVEL), fill_value=np.nan,
                )  # fmt: skip
        # the manifest goes last: a group without it is an unfinished creation, never a cache
        group.attrs[MANIFEST_ATTR] = manifest
        self._group = group

    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = zarr.open_group(store=self._zarr_store(), mode="r+")
        return self._group

    def manifest(self) -> dict[str, Any]:
        """The manifest, read straight from the group's zarr.json (no zarr machinery)."""
        try:
            meta = json.loads(self.fs.cat_file(f"{self.path}/zarr.json"))
        except FileNotFoundError as err:
            raise CacheError(f"no cache {self.key} under {self.root}") from err
        manifest = meta.get("attributes", {}).get(MANIFEST_ATTR)
        if manifest is None:
            raise CacheError(f"{self}: group has no manifest (creation was interrupted; delete the folder)")
        return manifest

    def array_meta(self, path: str) -> dict[str, Any]:
        return json.loads(self.fs.cat_file(f"{self.path}/{path}/zarr.json"))

    def shard_file(self, path: str, shard: int, ndim: int) -> str:
        """Path of one shard file of array `path` (default chunk keys: c/<k>/0/0/...)."""
        return f"{self.path}/{path}/c/{shard}" + "/0" * (ndim - 1)

    # ------------------------------------------------------------------ writing
    def write_shard(self, shard: int, blocks: dict[str, np.ndarray], marker: dict[str, Any]) -> None:
        """Write whole shard `shard` of every array (`blocks`: array path -> (shard_size, ...)), then its marker."""
        group = self.group()
        for path, block in blocks.items():
            # a shard left by a killed job: zarr would merge into it (and fail on its garbage index)
            stale = self.shard_file(path, shard, block.ndim)
            if self.fs.exists(stale):
                self.fs.rm(stale)
        for path, block in blocks.items():
            arr = group[path]
            s = arr.shards[0]
            if block.shape[0] != s:
                raise ValueError(f"{self}: shard block of {path} has {block.shape[0]} slots, expected {s}")
            arr[shard * s : (shard + 1) * s] = block
        self.write_json(f"{MARKER_DIR}/{shard:06d}.json", marker)

    def write_json(self, rel: str, obj: Any) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode()
        path = f"{self.path}/{rel}"
        if self.local:  # atomic: a reader sees the old file or the whole new one
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def read_json(self, rel: str) -> Any | None:
        """A JSON file of the cache, or None when absent or unreadable (e.g. cut short)."""
        try:
            return json.loads(self.fs.cat_file(f"{self.path}/{rel}"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    # ------------------------------------------------------------------ markers
    def marker_names(self) -> dict[int, str]:
        try:
            names = self.fs.ls(f"{self.path}/{MARKER_DIR}", detail=False)
        except FileNotFoundError:
            return {}
        out = {}
        for name in names:
            base = name.rstrip("/").rsplit("/", 1)[-1]
            if base.endswith(".json") and base[:-5].isdigit():
                out[int(base[:-5])] = base
        return out

    def read_markers(self) -> dict[int, dict[str, Any]]:
        """Done markers by shard number: from index.json plus any marker written after it."""
        index = self.read_json(INDEX_FILE) or {}
        known = {int(k): v for k, v in index.get("shards", {}).items()}
        for shard, base in self.marker_names().items():
            if shard not in known:
                marker = self.read_json(f"{MARKER_DIR}/{base}")
                if marker is not None:
                    known[shard] = marker
        return dict(sorted(known.items()))

    def drop_shards(self, shards: list[int]) -> None:
        """Forget finished shards: markers first (the entries stop existing), then index.json, then files."""
        drop = set(int(k) for k in shards)
        if not drop:
            return
        for shard in drop:
            marker = f"{self.path}/{MARKER_DIR}/{shard:06d}.json"
            if self.fs.exists(marker):
                self.fs.rm(marker)
        index = self.read_json(INDEX_FILE)
        if index is not None:
            index["shards"] = {k: v for k, v in index.get("shards", {}).items() if int(k) not in drop}
            self.write_json(INDEX_FILE, index)
        manifest = self.manifest()
        paths = [array_path(n) for n in manifest["map_names"]]
        if manifest["storage_dtype"] == "int8":
            paths += [array_path(n, scale=True) for n in manifest["map_names"]]
        for path in paths:
            ndim = len(self.array_meta(path)["shape"])
            for shard in drop:
                f = self.shard_file(path, shard, ndim)
                if self.fs.exists(f):
                    self.fs.rm(f)

    def write_index(self) -> dict[int, dict[str, Any]]:
        """Merge all markers into index.json (one read to open the cache, also on object storage)."""
        markers = self.read_markers()
        self.write_json(INDEX_FILE, {"shards": {str(k): v for k, v in markers.items()}})
        return markers
