"""Read one image's inner chunk from a sharded Zarr v3 array without zarr's per-call machinery.

zarr 3.1.6 spends 2.5-4 ms per single-image read on its async machinery (NOTES.md), 10-20x
more than the data takes. A shard file (sharding codec, index at the end) is the inner chunks'
encoded bytes followed by an index of (offset, nbytes) uint64 pairs and a crc32c; this reader
loads each shard's index once (LRU), then reads and zstd-decodes only the wanted chunk. It
accepts only the layout `store.py` writes (checked against the array's zarr.json); anything else
falls back to zarr itself, so it can never misread.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numcodecs
import numpy as np

MISSING = np.uint64(2**64 - 1)
CRC = numcodecs.CRC32C()


def fast_layout(meta: dict[str, Any]) -> dict[str, Any] | None:
    """Parsed layout when the array is one this reader handles, else None."""
    try:
        (codec,) = meta["codecs"]
        if codec["name"] != "sharding_indexed":
            return None
        cfg = codec["configuration"]
        inner = cfg["chunk_shape"]
        names = [c["name"] for c in cfg["codecs"]]
        index = [c["name"] for c in cfg["index_codecs"]]
        endian_ok = all(c.get("configuration", {}).get("endian", "little") == "little" for c in cfg["codecs"])
        if names not in (["bytes", "zstd"], ["bytes"]) or index != ["bytes", "crc32c"] or not endian_ok:
            return None
        if cfg.get("index_location", "end") != "end" or inner[0] != 1 or list(inner[1:]) != meta["shape"][1:]:
            return None
        if meta["chunk_key_encoding"] != {"name": "default", "configuration": {"separator": "/"}}:
            return None
        shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
        return {
            "dtype": np.dtype(meta["data_type"]).newbyteorder("<"),
            "inner": tuple(inner[1:]),
            "slots": int(shard[0]),
            "zstd": names[-1] == "zstd",
        }
    except (KeyError, TypeError, ValueError):
        return None


class ShardChunkReader:
    """`read(slot)` -> the (C, h, w) numpy chunk of one image, or None when never written."""

    def __init__(self, fs, array_dir: str, layout: dict[str, Any], local: bool, max_indices: int = 4096):
        self.fs, self.array_dir, self.local = fs, array_dir, local
        self.dtype, self.inner, self.slots = layout["dtype"], layout["inner"], layout["slots"]
        self.codec = numcodecs.Zstd() if layout["zstd"] else None
        self.ndim = 1 + len(self.inner)
        self.index_bytes = 16 * self.slots + 4  # (offset, nbytes) per inner chunk + crc32c
        self._indices: OrderedDict[int, np.ndarray] = OrderedDict()
        self._max = max_indices

    def _file(self, shard: int) -> str:
        return f"{self.array_dir}/c/{shard}" + "/0" * (self.ndim - 1)

    def _range(self, path: str, start: int, end: int | None) -> bytes:
        if self.local:
            with open(path, "rb") as f:
                if end is None:  # the tail: `start` is negative
                    f.seek(start, 2)
                    return f.read()
                f.seek(start)
                return f.read(end - start)
        if end is None:
            size = self.fs.size(path)
            return self.fs.cat_file(path, start=size + start, end=size)
        return self.fs.cat_file(path, start=start, end=end)

    def _index(self, shard: int) -> np.ndarray | None:
        idx = self._indices.get(shard)
        if idx is not None:
            self._indices.move_to_end(shard)
            return idx
        try:
            raw = self._range(self._file(shard), -self.index_bytes, None)
        except FileNotFoundError:
            return None
        if len(raw) != self.index_bytes:
            raise OSError(f"shard file {self._file(shard)} is shorter than its index ({len(raw)} bytes)")
        try:  # the index's own crc32c: a truncated or overwritten shard fails here, before any seek
            CRC.decode(raw)
        except RuntimeError as err:
            raise OSError(f"shard file {self._file(shard)}: index checksum mismatch ({err})") from err
        idx = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.slots, 2)
        self._indices[shard] = idx
        if len(self._indices) > self._max:
            self._indices.popitem(last=False)
        return idx

    def read(self, slot: int) -> np.ndarray | None:
        shard, local = divmod(slot, self.slots)
        idx = self._index(shard)
        if idx is None or idx[local, 0] == MISSING:
            return None
        offset, nbytes = int(idx[local, 0]), int(idx[local, 1])
        raw = self._range(self._file(shard), offset, offset + nbytes)
        if len(raw) != nbytes:
            raise OSError(f"shard file {self._file(shard)} is cut short: chunk {local} needs bytes "
                          f"{offset}..{offset + nbytes}, got {len(raw)}")  # fmt: skip
        data = self.codec.decode(raw) if self.codec is not None else raw
        return np.frombuffer(data, dtype=self.dtype).reshape(self.inner)

    def shard_of(self, slot: int) -> tuple[int, str]:
        """(shard number, shard file) holding `slot` (for error messages)."""
        shard = slot // self.slots
        return shard, self._file(shard)
