"""The precompute job: run a depth source over images into a cache, resumably, in one or more processes.

A job reads the finished and failed ids from the cache's done markers, assigns the remaining
images to shards that have no marker (lowest numbers first, `shard_size` images each), and each
process (`torchrun`: RANK / WORLD_SIZE) takes the shards `k % world_size == rank`, so no two
processes ever write one shard. Images are decoded in DataLoader workers, computed in batches,
and each full shard is handed to a writer thread that writes it once and then its marker.
Killing the job loses at most the shards in flight; the next run recomputes only those. An
image that cannot be read is recorded in its shard's marker and the report, and skipped.
With `flip_views`, every image also goes through the source mirrored left-right, in the same
batch call, and those maps are stored as `<name>@flip` with the same geometry.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from depth_cache.config import CacheConfig, EstimatorConfig
from depth_cache.entry import quantise_int8
from depth_cache.geometry import Canvas, Geometry, fit_frame, make_canvas
from depth_cache.images import ImageRecord, LoadDataset
from depth_cache.key import CANVAS_ASPECT, cache_key, diff_fields, key_fields
from depth_cache.store import FLIP_SUFFIX, REPORT_FILE, CacheError, CacheStore, array_path, checksum, flip_name

FP16_MAX = 65504.0


@dataclass
class DistInfo:
    """This process's place in a multi-process job (world_size 1: a plain run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    barrier: Callable[[], None] = lambda: None


def dist_from_env() -> DistInfo:
    """RANK / WORLD_SIZE from torchrun; joins a gloo group (barriers only, on CPU or GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        # long timeout: a rank that finishes early waits for the slowest one at the final barrier
        dist.init_process_group("gloo", timeout=timedelta(hours=48))
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.barrier)


@dataclass
class PrecomputeResult:
    """What one process did."""

    key: str
    root: str
    computed: int = 0  # images this process stored
    failed: dict[str, str] = field(default_factory=dict)  # id -> reason, this run
    already_done: int = 0  # images found finished (all processes see the same number)
    skipped_failed: int = 0  # images that failed in an earlier run (retry with retry_failed)
    shards: list[int] = field(default_factory=list)  # shards this process wrote
    calls: int = 0  # images that went through the depth source (twice per image with flip_views)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def build_manifest(key: str, fields: dict, runner, cache_cfg: CacheConfig, canvas: Canvas) -> dict[str, Any]:
    shapes = runner.probe((canvas.short, canvas.long))
    names = ["depth", *runner.levels]
    missing = [n for n in cache_cfg.levels if n not in shapes]
    if missing:
        raise ValueError(f"the source does not produce levels {missing}; it gives {runner.levels}")
    if cache_cfg.flip_views:  # the mirrored image has the same geometry: same arrays, same canvas
        names += [flip_name(n) for n in names]
        shapes.update({n: shapes[n.removesuffix(FLIP_SUFFIX)] for n in names})
    return {
        "key": key,
        "fields": fields,
        "shard_size": int(cache_cfg.shard_size),
        "storage_dtype": cache_cfg.dtype,
        "canvas": [canvas.short, canvas.long],
        "map_names": names,
        "flip_views": bool(cache_cfg.flip_views),
        "maps": {n: {"channels": int(shapes[n][0]), "grid": [int(shapes[n][1]), int(shapes[n][2])]} for n in names},
        "source": runner.describe(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def ensure_cache(store: CacheStore, fields: dict, runner, cache_cfg: CacheConfig, canvas: Canvas, dist: DistInfo):
    """Create the cache (rank 0) unless it exists; every rank returns its manifest."""
    if dist.rank == 0 and not store.exists():
        store.create(build_manifest(store.key, fields, runner, cache_cfg, canvas))
    dist.barrier()
    manifest = store.manifest()
    if manifest["fields"] != fields:
        diff = "; ".join(diff_fields(manifest["fields"], fields))
        raise CacheError(f"{store}: manifest differs from the settings: {diff}")
    return manifest


def plan_shards(records: list[ImageRecord], markers: dict[int, dict], shard_size: int, retry_failed: bool):
    """Assign the images not yet finished to free shard numbers: [(shard, [records])], done, skipped."""
    done = {img[0] for m in markers.values() for img in m["images"]}
    failed = {i for m in markers.values() for i in m.get("failed", {})} - done
    todo, seen, skipped = [], set(), 0
    for r in records:
        if r.id in seen or r.id in done:
            continue
        seen.add(r.id)
        if r.id in failed and not retry_failed:
            skipped += 1
            continue
        todo.append(r)
    plan, k = [], 0
    for start in range(0, len(todo), shard_size):
        while k in markers:
            k += 1
        plan.append((k, todo[start : start + shard_size]))
        k += 1
    return plan, len({r.id for r in records} & done), skipped


class ShardWriter:
    """Writes finished shards on a thread so the source never waits for storage."""

    def __init__(self, store: CacheStore, max_pending: int = 2):
        self.store, self.error = store, None
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.thread = threading.Thread(target=self._loop, name="shard-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (job := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.store.write_shard(*job)
                except BaseException as err:  # surfaced by submit/close in the main thread
                    self.error = err

    def submit(self, shard: int, blocks: dict[str, np.ndarray], marker: dict) -> None:
        self._raise()
        self.queue.put((shard, blocks, marker))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise CacheError(f"writing to {self.store} failed: {self.error}") from self.error


def pack_shard(shard: int, items: list[dict], manifest: dict, rank: int) -> tuple[dict[str, np.ndarray], dict]:
    """Shard buffers (array path -> (shard_size, ...)) and the done marker of computed items."""
    S, names, int8 = int(manifest["shard_size"]), manifest["map_names"], manifest["storage_dtype"] == "int8"
    blocks: dict[str, np.ndarray] = {}
    for n in names:
        c, (gh, gw) = manifest["maps"][n]["channels"], manifest["maps"][n]["grid"]
        shape = (S, c, gh, gw)
        blocks[array_path(n)] = np.zeros(shape, np.int8) if int8 else np.full(shape, np.nan, np.float16)
        if int8:
            blocks[array_path(n, scale=True)] = np.full((S, c), np.nan, np.float32)
    images, slots = [], []
    for it in sorted((i for i in items if "maps" in i), key=lambda i: i["slot"]):
        geo: Geometry = it["geometry"]
        for n in names:
            m = it["maps"][n].numpy()
            m = m.swapaxes(-1, -2) if geo.transposed else m
            c, h, w = m.shape
            grid = blocks[array_path(n)].shape[1:]
            if c != grid[0] or h > grid[1] or w > grid[2]:
                raise CacheError(f"{n} of {it['record'].path} is {m.shape}, larger than the canvas {grid}")
            if int8:
                q, scale = quantise_int8(m)
                blocks[array_path(n)][it["slot"], :, :h, :w] = q
                blocks[array_path(n, scale=True)][it["slot"]] = scale
            else:
                blocks[array_path(n)][it["slot"]] = 0
                blocks[array_path(n)][it["slot"], :, :h, :w] = np.clip(m, -FP16_MAX, FP16_MAX)
        images.append([it["record"].id, it["slot"], geo.to_json(names)])
        slots.append(it["slot"])
    marker = {
        "shard": shard,
        "images": images,
        "failed": {i["record"].id: f"{i['record'].path}: {i['error']}" for i in items if "error" in i},
        "checksums": {p: checksum([b[s] for s in slots]) for p, b in blocks.items()},
        "rank": rank,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return blocks, marker


def _keep(item):
    return item


def precompute(records: list[ImageRecord], runner, fields: dict, cache_cfg: CacheConfig, *,
               dist: DistInfo | None = None, retry_failed: bool = False, progress: bool = True,
               num_workers: int | None = None) -> PrecomputeResult:  # fmt: skip
    """Compute and store every image of `records` that the cache (key from `fields`) lacks."""
    dist = dist or DistInfo()
    t0 = time.perf_counter()
    if cache_cfg.flip_views and getattr(runner, "flip_exact", False):
        raise ValueError(
            "flip_views is for network estimators: a flip of this source's maps is exact (stage two flips "
            "the cached maps), so storing the flipped view would only double the cache"
        )
    if bool(fields.get("flip_views", False)) != bool(cache_cfg.flip_views):
        # the key must say whether the flipped views are stored (key.key_fields does)
        raise ValueError(
            f"cache fields say flip_views={bool(fields.get('flip_views', False))}, the cache config says "
            f"{cache_cfg.flip_views}"
        )
    key = cache_key(fields)
    store = CacheStore(cache_cfg.root, key)
    canvas = make_canvas(runner.short_side, CANVAS_ASPECT, runner.multiple_of)
    manifest = ensure_cache(store, fields, runner, cache_cfg, canvas, dist)
    markers = store.read_markers()
    dist.barrier()  # every rank planned from the same markers before anyone writes
    plan, done, skipped = plan_shards(records, markers, int(manifest["shard_size"]), retry_failed)
    mine = [(k, recs) for i, (k, recs) in enumerate(plan) if i % dist.world_size == dist.rank]
    result = PrecomputeResult(key=key, root=cache_cfg.root, already_done=done, skipped_failed=skipped)
    items = [(k, slot, r) for k, recs in mine for slot, r in enumerate(recs)]
    workers = cache_cfg.num_workers if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        LoadDataset(items, runner.loader()), batch_size=None, num_workers=workers if items else 0,
        collate_fn=_keep, prefetch_factor=4 if workers and items else None,
    )  # fmt: skip
    canvas_fit = (canvas, runner.multiple_of)
    bar = tqdm(total=len(items), unit="img", desc=f"precompute {key}", disable=not progress or dist.rank != 0)
    iterator = iter(loader)  # workers fork before the writer thread starts
    writer = ShardWriter(store)
    calls0 = runner.calls
    try:
        pending: list[dict] = []
        for item in iterator:
            if pending and item["shard"] != pending[0]["shard"]:
                _flush(pending, runner, manifest, canvas_fit, writer, result, dist.rank, bar)
                pending = []
            pending.append(item)
        if pending:
            _flush(pending, runner, manifest, canvas_fit, writer, result, dist.rank, bar)
    finally:
        bar.close()
        writer.close()  # complete shards already handed over are still written
    result.calls = runner.calls - calls0
    dist.barrier()
    if dist.rank == 0:
        write_report(store)
    result.seconds = time.perf_counter() - t0
    return result


def _flush(items, runner, manifest, canvas_fit, writer, result, rank, bar) -> None:
    canvas, multiple_of = canvas_fit
    ok = [i for i in items if "error" not in i]
    for it in ok:
        orig = runner.input_size(it["input"])
        frame, transposed = fit_frame(runner.natural_frame(orig), canvas, multiple_of)
        it["geometry"] = (orig, frame, transposed)
    inputs, frames = [i["input"] for i in ok], [i["geometry"][1] for i in ok]
    if ok and manifest.get("flip_views", False):
        # the mirrored decoded image (what a flipped file would give), in the same call so batches stay full
        both = runner.run(inputs + [x.flip(-1) for x in inputs], frames + frames)
        plain, mirrored = both[: len(ok)], both[len(ok) :]
        maps = [{**a, **{flip_name(k): v for k, v in b.items()}} for a, b in zip(plain, mirrored, strict=True)]
    else:
        maps = runner.run(inputs, frames) if ok else []
    for it, m in zip(ok, maps, strict=True):
        orig, frame, transposed = it["geometry"]
        extents = {n: tuple(int(s) for s in t.shape[-2:]) for n, t in m.items()}
        it["geometry"], it["maps"] = Geometry(tuple(orig), tuple(frame), transposed, extents), m
        del it["input"]
    shard = items[0]["shard"]
    blocks, marker = pack_shard(shard, items, manifest, rank)
    writer.submit(shard, blocks, marker)
    result.computed += len(ok)
    result.failed.update({i["record"].id: i["error"] for i in items if "error" in i})
    result.shards.append(shard)
    bar.update(len(items))


def write_report(store: CacheStore) -> dict[str, Any]:
    """Merge the markers into index.json and write report.json: finished count and failed images."""
    markers = store.write_index()
    done = {img[0] for m in markers.values() for img in m["images"]}
    failed = {i: why for m in markers.values() for i, why in m.get("failed", {}).items() if i not in done}
    report = {"key": store.key, "images": len(done), "shards": len(markers), "failed": failed}
    store.write_json(REPORT_FILE, report)
    return report


def run_precompute(records: list[ImageRecord], estimator_cfg: EstimatorConfig, cache_cfg: CacheConfig, *,
                   retry_failed: bool = False, progress: bool = True) -> PrecomputeResult:  # fmt: skip
    """Build the configured source and run the job (multi-process under torchrun)."""
    from depth_cache.estimators import build_source
    from depth_cache.runner import make_runner

    dist = dist_from_env()
    fields = key_fields(estimator_cfg, cache_cfg)  # fails on a missing weights file before any work
    source = build_source(estimator_cfg, cache_cfg.levels)
    device = estimator_cfg.device
    if device == "auto" and dist.world_size > 1 and torch.cuda.is_available():
        device = f"cuda:{dist.local_rank}"
    runner = make_runner(source, cache_cfg.depth_stride, estimator_cfg.input_size, device=device,
                         precision=estimator_cfg.precision, batch_size=cache_cfg.batch_size)  # fmt: skip
    threads = torch.get_num_threads()
    if getattr(runner, "device", torch.device("cpu")).type == "cpu":
        # leave the decoding workers their cores: oversubscribed intra-op threads ran 7x slower (2 cores)
        cores = (os.cpu_count() or 1) // dist.world_size
        torch.set_num_threads(max(1, min(threads, cores - cache_cfg.num_workers)))
    try:
        return precompute(records, runner, fields, cache_cfg, dist=dist, retry_failed=retry_failed, progress=progress)
    finally:
        torch.set_num_threads(threads)
