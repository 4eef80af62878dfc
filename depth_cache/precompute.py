"""The precompute job: run a depth source over images into a cache, resumably, in one or more processes.

A job reads the finished and failed ids from the cache's done markers and refuses ids whose entry
was made from another file (fingerprint.py). It then claims shards one at a time (claims.py: an
exclusive claim file with a lease), each for the next `shard_size` images that no marker and no
other job's live claim covers, so processes of one torchrun job and independent jobs (other
machines on one object store) split the work and never write one shard twice. Images are decoded
in DataLoader workers, computed in batches, and each full shard is handed to a writer thread that
writes it once, then its marker, then gives back the claim. A job ends when all its images are
finished: it waits for images other jobs hold, and takes over claims whose lease lapsed (a killed
job). Killing the job loses at most the shards in flight. An image that cannot be read is recorded
in its shard's marker and the report, and skipped. Throughput: JPEGs bound for a GPU are only read
in the workers and decoded there in batches (`depth_cache.decode`); the runner returns a shard's
maps with their device-to-host copies still running, and a pool of writer threads waits for those
copies, packs and writes, while the main thread already feeds the next shard to the estimator.
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
from dgseg.depth_cache.claims import ClaimingSampler, ShardClaims
from dgseg.depth_cache.config import CacheConfig, EstimatorConfig
from dgseg.depth_cache.decode import default_workers
from dgseg.depth_cache.entry import quantise_int8
from dgseg.depth_cache.fingerprint import check_cached_ids, check_stems
from dgseg.depth_cache.geometry import Canvas, Geometry, fit_frame, make_canvas
from dgseg.depth_cache.images import ImageRecord, LoadDataset
from dgseg.depth_cache.key import CANVAS_ASPECT, cache_key, diff_fields, key_fields
from dgseg.depth_cache.store import (
    FLIP_SUFFIX,
    REPORT_FILE,
    CacheError,
    CacheStore,
    array_path,
    checksum,
    create_exclusive,
    flip_name,
)
from tqdm import tqdm

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
    lost_shards: list[int] = field(default_factory=list)  # computed, but a successor had taken the claim over
    seconds: float = 0.0
    startup_s: float = 0.0  # until the loader gave its first image (cache set-up, planning, workers' start)
    started: float = 0.0  # perf_counter at the job's start
    # seconds per part of the job (`bench cache` prints them per image): the main thread's waits and calls
    # ("load" = waiting for the workers' read + decode), and the writer threads' ("d2h", "pack", "write")
    parts: dict[str, float] = field(default_factory=dict)

    def add_time(self, part: str, seconds: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + seconds

    @property
    def images_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float:
        """The rate once the loader delivers (start-up excluded): what a long job converges to."""
        run = self.seconds - self.startup_s
        return self.computed / run if run > 0 else 0.0


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


def ensure_cache(store: CacheStore, fields: dict, runner, cache_cfg: CacheConfig, canvas: Canvas, dist: DistInfo,
                 wait_s: float = 300.0):  # fmt: skip
    """Create the cache (rank 0) unless it exists; every rank returns its manifest. Independent jobs
    starting together: one wins the exclusive `<key>.creating` file and creates, the others wait for
    its manifest (creating twice would wipe the first job's arrays)."""
    lock = f"{store.path}.creating"
    if dist.rank == 0 and not store.exists():
        won = create_exclusive(store, lock, b"")
        try:
            if won is not False and not store.exists():  # re-check: a job may have finished creating just now
                store.create(build_manifest(store.key, fields, runner, cache_cfg, canvas))
        finally:
            if won is not False:
                store.fs.rm(lock)
    dist.barrier()
    deadline = time.time() + wait_s
    while True:
        try:
            manifest = store.manifest()
            break
        except CacheError:
            if time.time() > deadline or not (store.fs.exists(lock) or not store.exists()):
                raise
            time.sleep(0.2)  # another job is creating the cache
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
    """Packs and writes finished shards on `threads` threads so the source never waits for storage;
    with `claims`, only shards this job still owns, each claim given back once its marker is written.

    A job is (shard, items, manifest, rank, wait): the thread calls `wait()` (the runner's
    device-to-host copies of those items), packs the shard (`pack_shard`) and writes it, then its
    marker. Shards are independent files, so threads never share one. At most `max_pending` shards
    wait in the queue (each holds its maps in host memory)."""

    def __init__(self, store: CacheStore, claims: ShardClaims | None = None, max_pending: int = 1,
                 threads: int = 1, clock: Callable[[str, float], None] | None = None):  # fmt: skip
        self.store, self.claims, self.error = store, claims, None
        self.clock = clock or (lambda part, seconds: None)  # told each job's seconds per part
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self.threads = [threading.Thread(target=self._loop, name=f"shard-writer-{i}", daemon=True)
                        for i in range(max(1, threads))]  # fmt: skip
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        while (job := self.queue.get()) is not None:
            if self.error is None:
                try:
                    shard, items, manifest, rank, wait = job
                    t0 = time.perf_counter()
                    wait()
                    t1 = time.perf_counter()
                    if self.claims is not None and not self.claims.still_mine(shard):
                        self.claims.lose(shard)  # our lease lapsed and a successor owns it: its write wins
                        continue
                    packed = pack_shard(shard, items, manifest, rank)
                    t2 = time.perf_counter()
                    self.store.write_shard(shard, *packed)
                    t3 = time.perf_counter()
                    for part, seconds in (("d2h wait", t1 - t0), ("pack", t2 - t1), ("compress + write", t3 - t2)):
                        self.clock(part, seconds)
                    if self.claims is not None:
                        self.claims.release(shard)
                except BaseException as err:  # surfaced by submit/close in the main thread
                    self.error = err

    def submit(self, shard: int, items: list[dict], manifest: dict, rank: int, wait=lambda: None) -> None:
        self._raise()
        self.queue.put((shard, items, manifest, rank, wait))

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join()
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
        # the file each entry was computed from (fingerprint.py): a collision of ids is caught by it
        "sources": {i["record"].id: i["source"] for i in items if "maps" in i and i.get("source")},
        "rank": rank,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return blocks, marker


def _keep(item):
    return item


def precompute(records: list[ImageRecord], runner, fields: dict, cache_cfg: CacheConfig, *,
               dist: DistInfo | None = None, retry_failed: bool = False, progress: bool = True,
               num_workers: int | None = None, writer_threads: int | None = None) -> PrecomputeResult:  # fmt: skip
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
    check_sources(records, markers, store, runner)
    dist.barrier()  # every rank looked at the same markers before anyone writes
    plan, done, skipped = plan_shards(records, markers, int(manifest["shard_size"]), retry_failed)
    result = PrecomputeResult(key=key, root=cache_cfg.root, already_done=done, skipped_failed=skipped, started=t0)
    todo = [r for _, recs in plan for r in recs]
    handled = {r.id for r in records} - {r.id for r in todo}  # finished, or failed before (no retry)
    claims = ShardClaims(store, cache_cfg.lease_s)
    workers = cache_cfg.num_workers if num_workers is None else num_workers
    if workers is None:
        workers = default_workers(getattr(runner, "device", "cpu"), dist.world_size)
    threads = cache_cfg.writer_threads if writer_threads is None else writer_threads
    calls0 = runner.calls
    bar = ImageProgress(tqdm(total=len(todo), unit="img", desc=f"precompute {key}",
                             disable=not progress or dist.rank != 0), 2 if manifest.get("flip_views") else 1)
    runner.progress = bar
    map_dtype = getattr(runner, "map_dtype", None)
    if manifest["storage_dtype"] == "fp16" and map_dtype is not None:
        runner.map_dtype = torch.float16  # cast on the device: half the device-to-host bytes, no host cast
    try:
        while True:  # passes: claim and compute what is free; then wait for other jobs' claims on our images
            sampler = ClaimingSampler([r.id for r in todo], claims, int(manifest["shard_size"]), handled)
            sampler.mark_known(set(markers))
            _run_pass(todo, sampler, runner, manifest, canvas, store, (workers, threads), result, dist.rank, bar)
            if sampler.todo():
                continue  # claims released or expired meanwhile: take those images over
            waiting = sampler.waiting()
            if not waiting:
                break
            bar.set_postfix_str(f"waiting for {len(waiting)} images claimed by other jobs")
            time.sleep(min(5.0, cache_cfg.lease_s / 4))
    finally:
        if map_dtype is not None:
            runner.map_dtype = map_dtype  # the runner's own callers keep getting float32 maps
        bar.close()
        claims.close()  # unfinished shards go back at once (a killed job's wait for their lease to lapse)
    result.lost_shards = list(claims.lost)
    result.calls = runner.calls - calls0
    dist.barrier()
    if dist.rank == 0:
        write_report(store)
    result.seconds = time.perf_counter() - t0
    return result


def check_sources(records: list[ImageRecord], markers: dict[int, dict], store: CacheStore, runner) -> None:
    """Refuse an id whose entry was made from another file, and (`files` source) two different images
    sharing a file name, naming both files (fingerprint.py)."""
    sources = {i: src for m in markers.values() for i, src in (m.get("sources") or {}).items()}
    done = {img[0] for m in markers.values() for img in m["images"]}
    check_cached_ids([(r.id, r.path) for r in records if r.id in done], sources, str(store))
    if getattr(runner, "maps_by_stem", False):
        check_stems([(r.id, r.path) for r in records], sources, runner.describe().get("depth_dir", ""))


def _run_pass(todo, sampler, runner, manifest, canvas, store, parallel, result, rank, bar) -> None:
    """Load, compute and write the shards `sampler` claims; returns when they are all written.
    `parallel` = (loader workers, writer threads)."""
    workers, threads = parallel
    items = [(-1, -1, r) for r in todo]  # shard and slot come from the sampler's claims
    loader = torch.utils.data.DataLoader(
        LoadDataset(items, runner.loader()), batch_size=None, sampler=sampler, num_workers=workers if items else 0,
        collate_fn=_keep, prefetch_factor=4 if workers and items else None, pin_memory=runner.pin_memory,
    )  # fmt: skip
    canvas_fit = (canvas, runner.multiple_of)
    iterator = iter(loader)  # workers fork before the writer thread starts
    # host memory: one shard's float32 maps per writer thread, one queued and one being computed
    lock = threading.Lock()

    def clock(part: str, seconds: float) -> None:
        with lock:  # writer threads and the main thread add to one dict
            result.add_time(part, seconds)

    writer = ShardWriter(store, sampler.claims, max_pending=1, threads=threads, clock=clock)
    try:
        pending: list[dict] = []
        t = time.perf_counter()
        for item in iterator:
            if result.startup_s:  # the first wait is start-up (workers' start), not loading
                clock("load wait (read, decode)", time.perf_counter() - t)
            if not result.startup_s:
                result.startup_s = time.perf_counter() - result.started
            item["shard"], item["slot"] = sampler.where[item["index"]]
            if pending and item["shard"] != pending[0]["shard"]:
                _flush(pending, runner, manifest, canvas_fit, writer, result, rank, bar, clock)
                pending = []
            pending.append(item)
            t = time.perf_counter()
        if pending:
            _flush(pending, runner, manifest, canvas_fit, writer, result, rank, bar, clock)
    finally:
        writer.close()  # complete shards already handed over are still written


class ImageProgress:
    """The bar moves as the runner finishes each batch of images (a shard of 64 takes minutes for a
    large network on a CPU); `views` runs per image with flip_views. Failed images count at the shard's end."""

    def __init__(self, bar: tqdm, views: int = 1) -> None:
        self.bar, self.views, self.runs, self.shown = bar, views, 0, 0

    def __call__(self, n: int) -> None:
        self.runs += n
        step = self.runs // self.views - self.shown
        if step > 0:
            self.bar.update(step)
            self.shown += step

    def shard_done(self, n_items: int) -> None:
        if n_items > self.shown:
            self.bar.update(n_items - self.shown)
        self.runs = self.shown = 0

    def __getattr__(self, name: str):  # close, set_postfix_str, ...: the bar's own
        if name == "bar":
            raise AttributeError(name)
        return getattr(self.bar, name)


def _flush(items, runner, manifest, canvas_fit, writer, result, rank, bar, clock=lambda part, s: None) -> None:
    canvas, multiple_of = canvas_fit
    t0 = time.perf_counter()
    runner.prepare(items)  # JPEGs bound for a GPU (nvjpeg) are decoded there, in one batch
    t1 = time.perf_counter()
    ok = [i for i in items if "error" not in i]
    for it in ok:
        orig = runner.input_size(it["input"])
        frame, transposed = fit_frame(runner.natural_frame(orig), canvas, multiple_of)
        it["geometry"] = (orig, frame, transposed)
    inputs, frames = [i["input"] for i in ok], [i["geometry"][1] for i in ok]
    if ok and manifest.get("flip_views", False):
        # the mirrored decoded image (what a flipped file would give), in the same call so batches stay full
        both, wait = runner.run_async(inputs + [x.flip(-1) for x in inputs], frames + frames)
        plain, mirrored = both[: len(ok)], both[len(ok) :]
        maps = [{**a, **{flip_name(k): v for k, v in b.items()}} for a, b in zip(plain, mirrored, strict=True)]
    else:
        maps, wait = runner.run_async(inputs, frames) if ok else ([], _no_wait)
    t2 = time.perf_counter()
    for it, m in zip(ok, maps, strict=True):
        orig, frame, transposed = it["geometry"]
        extents = {n: tuple(int(s) for s in t.shape[-2:]) for n, t in m.items()}
        it["geometry"], it["maps"] = Geometry(tuple(orig), tuple(frame), transposed, extents), m
        del it["input"]
    shard = items[0]["shard"]
    t3 = time.perf_counter()
    writer.submit(shard, items, manifest, rank, wait)
    clock("device decode", t1 - t0)
    clock("resize, normalise, network, d2h queued", t2 - t1)
    clock("writer backlog wait", time.perf_counter() - t3)
    result.computed += len(ok)
    result.failed.update({i["record"].id: i["error"] for i in items if "error" in i})
    result.shards.append(shard)
    bar.shard_done(len(items))


def _no_wait() -> None:
    return None


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
    from dgseg.depth_cache.estimators import build_source
    from dgseg.depth_cache.runner import make_runner

    dist = dist_from_env()
    fields = key_fields(estimator_cfg, cache_cfg)  # fails on a missing weights file before any work
    source = build_source(estimator_cfg, cache_cfg.levels)
    device = estimator_cfg.device
    if device == "auto" and dist.world_size > 1 and torch.cuda.is_available():
        device = f"cuda:{dist.local_rank}"
    runner = make_runner(source, cache_cfg.depth_stride, estimator_cfg.input_size, device=device,
                         precision=estimator_cfg.precision, batch_size=cache_cfg.batch_size,
                         decoder=cache_cfg.decode, compile=estimator_cfg.compile)  # fmt: skip
    threads = torch.get_num_threads()
    if getattr(runner, "device", torch.device("cpu")).type == "cpu":
        # leave the decoding workers their cores: oversubscribed intra-op threads ran 7x slower (2 cores)
        cores = (os.cpu_count() or 1) // dist.world_size
        workers = cache_cfg.num_workers
        workers = default_workers("cpu", dist.world_size) if workers is None else workers
        torch.set_num_threads(max(1, min(threads, cores - workers)))
    try:
        return precompute(records, runner, fields, cache_cfg, dist=dist, retry_failed=retry_failed, progress=progress)
    finally:
        torch.set_num_threads(threads)
