"""Stage-one benchmark: `python cli.py bench cache` prints, in one run, side by side:

1. for the `tiny` estimator (CPU by default; `--vits` adds vits at 518 with random weights, meant
   for a GPU), on one device: the estimator alone (its forward on ready normalised batches of the
   518x686-shaped frame, images/s), the end-to-end precompute rate over JPEG files (read, decode,
   resize, network, transfer, pack, write; whole job and steady state after the first image), and
   their ratio (target >= 0.8 on a GPU host), and the same job with every image decoded by PIL
   in the workers (`depth.cache.decode: pil`, the path before GPU decoding) as the baseline; plus
   how far torchvision's JPEG decode on that device is from PIL's (max pixel difference);
2. bytes per image per stored map, for a cache with vits's shapes at 518 (64 channels; computed
   from shapes for 518x518 and 518x686 inputs, and measured on disk for 518x686) and fp16 vs int8,
   with the error int8 adds;
3. random single-image reads through `CacheReader` against the same cropped tensors from plain
   `.npy` files (one file per map per image), in one process and with 2 DataLoader workers.

The read benchmark uses a "vits-shaped" source (a cheap stand-in producing the shapes of vits at
518: depth at /4, path_4 64 x H/14 x W/14) so reads move realistic bytes without running vits.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from dgseg.depth_cache.catalog import cache_info
from dgseg.depth_cache.config import CacheConfig
from dgseg.depth_cache.estimators.base import DepthEstimator, DepthOutput, FeatureInfo, Preprocess
from dgseg.depth_cache.images import ImageRecord
from dgseg.depth_cache.precompute import precompute
from dgseg.depth_cache.reader import CacheReader
from dgseg.depth_cache.runner import make_runner
from PIL import Image
from torch import nn

VITS_CHANNELS = 64


class VitsShaped(DepthEstimator):
    """Outputs with the shapes of DAv2-vits (path_4 at /14, path_3 at /7, 64 channels) from a 1x1 conv."""

    def __init__(self, levels: list[str]):
        super().__init__()
        self.name = "vits-shaped"
        self.preprocess = Preprocess(input_size=518, multiple_of=14)
        strides = {"path_4": 14, "path_3": 7}
        self.feature_info = [FeatureInfo(lv, VITS_CHANNELS, strides[lv]) for lv in levels]
        self.proj = nn.Conv2d(3, VITS_CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> DepthOutput:
        feats = {fi.name: self.proj(F.avg_pool2d(x, int(fi.stride))) for fi in self.feature_info}
        feats = {k: torch.sin(13.0 * v) for k, v in feats.items()}  # deterministic, high-entropy values
        return DepthOutput(x.mean(1) + 3.0, feats)


def _images(folder: Path, n: int, size: tuple[int, int], seed: int = 0, fmt: str = "jpg") -> list[ImageRecord]:
    """Generated photos-like images (smooth colour fields plus noise), JPEG quality 90 like COCO's."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = size
        arr = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(arr).resize((w, h), Image.BILINEAR)
        noisy = np.clip(np.asarray(img, np.int16) + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.{fmt}"
        Image.fromarray(noisy).save(path, **({"quality": 90} if fmt == "jpg" else {}))
        out.append(ImageRecord(str(i), str(path), (h, w)))
    return out


def _precompute(records, source, root: Path, levels, dtype="fp16", device="cpu", workers=None, name=None,
                batch_size=8, compile=False, decoder="torchvision"):  # fmt: skip
    cfg = CacheConfig(root=str(root), levels=levels, dtype=dtype, depth_stride=4, shard_size=64,
                      batch_size=batch_size, num_workers=workers, decode=decoder)  # fmt: skip
    runner = make_runner(source, 4, source.preprocess.input_size, device=device, precision="auto",
                         batch_size=batch_size, compile=compile, decoder=decoder)  # fmt: skip
    fields = {"estimator": name or source.name, "levels": levels, "dtype": dtype, "input_size": 518}
    result = precompute(records, runner, fields, cfg, progress=False)
    return result, CacheReader(str(root), result.key)


def estimator_rate(source, frame: tuple[int, int], device: str, batch_size: int = 8, images: int = 256,
                   compile: bool = False) -> float:  # fmt: skip
    """Images/s of the estimator alone: its forward (the runner's precision, channels-last, compiled or
    not) on a ready normalised batch already on the device, nothing else."""
    from dgseg.depth_cache.runner import run_network

    runner = make_runner(source, 4, source.preprocess.input_size, device=device, precision="auto",
                         batch_size=batch_size, compile=compile)  # fmt: skip
    x = torch.randn(batch_size, 3, *frame, device=runner.device)
    sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
    for _ in range(3):  # warm-up (and compilation)
        run_network(runner.forward, x, runner.dtype)
    sync()
    steps = max(1, images // batch_size)
    t = time.perf_counter()
    for _ in range(steps):
        run_network(runner.forward, x, runner.dtype)
    sync()
    return steps * batch_size / (time.perf_counter() - t)


def decoder_pair(device: str) -> tuple[str, str]:
    """The two decoders a host could give one cache: PIL vs torchvision on a CPU (libjpeg-turbo both),
    torchvision (host) vs nvjpeg on a GPU."""
    from dgseg.depth_cache.runner import resolve_device

    return ("torchvision", "nvjpeg") if resolve_device(device).type == "cuda" else ("pil", "torchvision")


def decode_gap(records: list[ImageRecord], source, device: str, decoders: tuple[str, str] | None = None,
               limit: int = 32) -> dict[str, float]:  # fmt: skip
    """How far two decoders' results are apart on the same JPEGs: pixels (max |difference|, share of
    values that differ) and the estimator's stored maps (relative L2 ||a - b|| / ||a||, mean over images)."""
    decoders = decoders or decoder_pair(device)
    recs = records[:limit]
    runs = {}
    for dec in decoders:
        runner = make_runner(source, 4, source.preprocess.input_size, device=device, precision="auto",
                             batch_size=8, decoder=dec)  # fmt: skip
        load = runner.loader()
        items = [{"record": r, "input": load(r)} for r in recs]
        runner.prepare(items)
        imgs = [it["input"] for it in items]
        maps = runner.run(imgs, [runner.natural_frame(tuple(i.shape[-2:])) for i in imgs])
        runs[dec] = ([i.cpu() for i in imgs], maps)
    (pa, ma), (pb, mb) = runs[decoders[0]], runs[decoders[1]]
    diffs = [(x.int() - y.int()).abs() for x, y in zip(pa, pb, strict=True)]
    out = {"decoders": f"{decoders[0]} vs {decoders[1]}", "max": float(max(int(d.max()) for d in diffs)),
           "share": float(sum(int((d > 0).sum()) for d in diffs) / sum(d.numel() for d in diffs))}
    for name in ma[0]:
        rel = [float((x[name].float() - y[name].float()).norm() / x[name].float().norm().clamp_min(1e-12))
               for x, y in zip(ma, mb, strict=True)]
        out[f"rel_l2/{name}"] = float(np.mean(rel))
    return out


def serial_parts(records: list[ImageRecord], source, device: str, batch_size: int = 8,
                 limit: int = 64) -> dict[str, float]:  # fmt: skip
    """Milliseconds per image of each step of precompute run alone, one after the other in one process:
    read, decode (torchvision on the host), host-to-device, resize and normalise, network, device-to-host
    of the float32 maps (what precompute copies), pack into fp16 (numpy, as `pack_shard` does)."""
    from dgseg.depth_cache.decode import read_file
    from dgseg.depth_cache.runner import prepare_images, resolve_device, run_network
    from torchvision.io import decode_jpeg

    dev = resolve_device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    recs = records[:limit - limit % batch_size] or records[:1]
    out: dict[str, float] = {}

    def timed(name: str, fn):
        sync()
        t = time.perf_counter()
        result = fn()
        sync()
        out[name] = out.get(name, 0.0) + (time.perf_counter() - t) * 1e3 / len(recs)
        return result

    data = timed("read", lambda: [read_file(r.path) for r in recs])
    imgs = timed("decode", lambda: [decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8)) for d in data])
    runner = make_runner(source, 4, source.preprocess.input_size, device=device, precision="auto",
                         batch_size=batch_size)  # fmt: skip
    frame = runner.natural_frame(tuple(imgs[0].shape[-2:]))
    for i in range(0, len(imgs), batch_size):
        host = torch.stack(imgs[i:i + batch_size])
        host = host.pin_memory() if dev.type == "cuda" else host
        batch = timed("host-to-device", lambda h=host: h.to(dev, non_blocking=True))
        x = timed("resize, normalise", lambda b=batch: prepare_images(b, frame, runner.estimator))
        depth, feats = timed("network", lambda x=x: run_network(runner.forward, x, runner.dtype))
        maps = {"depth": depth, **feats}
        cpu = timed("device-to-host", lambda m=maps: {k: v.float().cpu() for k, v in m.items()})
        timed("pack (fp16 on the host)", lambda c=cpu: {k: v.numpy().astype(np.float16) for k, v in c.items()})
    return out


def _throughput(figures: dict, key: str, source, records, root: Path, levels, device, name, batch_size, compile,
                workers) -> None:  # fmt: skip
    """Estimator alone vs end-to-end precompute, the same settings, one device."""
    alone = estimator_rate(source, (518, 686) if key == "vits" else _frame(source), device, batch_size,
                           images=len(records), compile=compile)  # fmt: skip
    res, _ = _precompute(records, source, root, levels, device=device, name=name, batch_size=batch_size,
                         compile=compile, workers=workers)  # fmt: skip
    # the same job with every image through PIL in the workers (the path before GPU decoding), its own root
    pil, _ = _precompute(records, source, root.parent / f"{root.name}_pil", levels, device=device, name=name,
                         batch_size=batch_size, compile=compile, workers=workers, decoder="pil")  # fmt: skip
    figures[key] = {"alone": alone, "job": res.images_per_s, "steady": res.steady_images_per_s,
                    "startup_s": res.startup_s, "job_pil": pil.images_per_s,
                    "job_parts_ms": {k: v * 1e3 / max(res.computed, 1) for k, v in res.parts.items()},
                    "serial_ms": serial_parts(records, source, device, batch_size)}  # fmt: skip


def _frame(source) -> tuple[int, int]:
    """The network input of a 480x640 image (4:3) for this estimator."""
    from dgseg.depth_cache.estimators.preprocess import target_size

    return target_size(480, 640, source.preprocess.input_size, source.preprocess.multiple_of)


def _shape_bytes(h: int, w: int, levels: list[str]) -> dict[str, int]:
    """fp16 bytes per map of vits for an (h, w) network input (depth at /4)."""
    up = {"path_4": 1, "path_3": 2, "path_2": 4, "path_1": 8}
    out = {"depth": 2 * -(-h // 4) * -(-w // 4)}
    for lv in levels:
        out[lv] = 2 * VITS_CHANNELS * (h // 14 * up[lv]) * (w // 14 * up[lv])
    return out


class _ReadSet(torch.utils.data.Dataset):
    def __init__(self, ids, read):
        self.ids, self.read = ids, read

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        out = self.read(self.ids[i])
        return out.depth.shape[-1] if hasattr(out, "depth") else out["depth"].shape[-1]


class NpyReader:
    """The baseline: one .npy per map per image, loaded and converted like the cache reader's output."""

    def __init__(self, folder: Path, names: list[str]):
        self.folder, self.names = folder, names

    def __call__(self, image_id: str) -> dict[str, torch.Tensor]:
        load = np.load
        return {n: torch.from_numpy(load(self.folder / f"{image_id}_{n}.npy").astype(np.float32)) for n in self.names}


def _rate(read, ids, workers: int) -> float:
    if workers == 0:
        read(ids[0])  # open lazily outside the timing, as a long-lived worker would
        t = time.perf_counter()
        for i in ids:
            read(i)
        return len(ids) / (time.perf_counter() - t)
    loader = torch.utils.data.DataLoader(_ReadSet(ids, read), batch_size=None, num_workers=workers,
                                         persistent_workers=False, prefetch_factor=8)  # fmt: skip
    it = iter(loader)
    next(it)  # workers started and opened
    t = time.perf_counter()
    n = sum(1 for _ in it)
    return n / (time.perf_counter() - t)


def run_bench(images: int = 256, input_size: int = 126, reads: int = 512, device: str = "cpu", vits: bool = False,
              work_dir: str | None = None, vitl: bool = False, batch_size: int = 8, compile: bool = False,
              workers: int | None = None) -> dict:  # fmt: skip
    """Run every part and print one table; returns the figures."""
    from dgseg.depth_cache.decode import default_workers
    from dgseg.depth_cache.estimators.depth_anything_v2 import build_depth_anything_v2, build_tiny

    torch.manual_seed(0)
    from dgseg.depth_cache.runner import resolve_device

    workers = default_workers(resolve_device(device)) if workers is None else workers
    if device == "cpu":  # as run_precompute does: leave the decoding workers their cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    tmp = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="bench_cache_"))
    shutil.rmtree(tmp / "caches", ignore_errors=True)
    shutil.rmtree(tmp / "caches_pil", ignore_errors=True)
    figures: dict = {"workers": workers, "batch_size": batch_size, "compile": compile}
    records = _images(tmp / "images", images, (480, 640))  # COCO's most common size -> 518x686 at 518

    # 1. estimator alone vs precompute end to end
    tiny = build_tiny(seed=0, input_size=input_size, levels=["path_4", "path_3"])
    _throughput(figures, "tiny", tiny, records, tmp / "caches", ["path_4", "path_3"], device, f"tiny{input_size}",
                batch_size, compile, workers)  # fmt: skip
    for size, on in [("vits", vits), ("vitl", vitl)]:
        if on:
            model = build_depth_anything_v2(size, input_size=518, levels=["path_4"])
            _throughput(figures, size, model, records, tmp / "caches", ["path_4"], device, f"{size}-random",
                        batch_size, compile, workers)  # fmt: skip
    figures["decode_gap"] = decode_gap(records, tiny, device)

    # 2. bytes, fp16 and int8, on vits shapes
    levels = ["path_4"]
    source = VitsShaped(levels)
    _, reader16 = _precompute(records, source, tmp / "caches", levels, "fp16")
    _, reader8 = _precompute(records, source, tmp / "caches", levels, "int8")
    info16, info8 = cache_info(reader16.root, reader16.key), cache_info(reader8.root, reader8.key)
    err = {n: [] for n in reader16.manifest["map_names"]}
    for i in reader16.ids()[:64]:
        a, b = reader16.get(i), reader8.get(i)
        for n, x, y in [("depth", a.depth, b.depth), *[(k, a.features[k], b.features[k]) for k in a.features]]:
            err[n].append(float((x - y).norm() / x.norm().clamp_min(1e-12)))
    figures["int8_rel_err"] = {n: float(np.mean(v)) for n, v in err.items()}

    # 3. reads
    npy = tmp / "npy"
    npy.mkdir(exist_ok=True)
    names = reader16.manifest["map_names"]
    for i in reader16.ids():
        e = reader16.get(i)
        for n, t in {"depth": e.depth, **e.features}.items():
            np.save(npy / f"{i}_{n}.npy", t.numpy().astype(np.float16))
    rng = random.Random(0)
    ids = [rng.choice(reader16.ids()) for _ in range(reads)]
    baseline = NpyReader(npy, names)
    figures["reads"] = {
        "npy_1p": _rate(baseline, ids, 0), "cache_1p": _rate(CacheReader(reader16.root, reader16.key).get, ids, 0),
        "npy_2w": _rate(baseline, ids, 2), "cache_2w": _rate(CacheReader(reader16.root, reader16.key).get, ids, 2),
    }  # fmt: skip
    _print(figures, info16, info8, levels, images, input_size, device)
    if not work_dir:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


def _print(figures, info16, info8, levels, images, input_size, device) -> None:
    r = figures["reads"]
    print(f"\n== stage-one cache benchmark ({images} JPEG images of 480x640; device {device}, batch "
          f"{figures['batch_size']}, {figures['workers']} loader workers, compile {figures['compile']}) ==")
    print(f"{'estimator (img/s)':<44}{'alone':>9}{'precompute':>12}{'ratio':>7}{'steady':>9}{'ratio':>7}"
          f"{'start s':>9}{'PIL decode':>12}{'ratio':>7}")
    labels = {"tiny": f"tiny at {input_size} (path_4+path_3)", "vits": "vits at 518 (518x686, random, path_4)",
              "vitl": "vitl at 518 (518x686, random, path_4)"}
    for key, label in labels.items():
        if key in figures:
            f = figures[key]
            print(f"{label:<44}{f['alone']:>9.1f}{f['job']:>12.1f}{f['job'] / f['alone']:>7.2f}"
                  f"{f['steady']:>9.1f}{f['steady'] / f['alone']:>7.2f}{f['startup_s']:>9.1f}"
                  f"{f['job_pil']:>12.1f}{f['job_pil'] / f['alone']:>7.2f}")
    for key in labels:
        if key in figures:
            f = figures[key]
            print(f"\nwhere an image's time goes, {key} (ms per image)")
            print("  each step alone, in sequence, one process: " + ", ".join(
                f"{k} {v:.2f}" for k, v in f["serial_ms"].items()))
            print(f"  in the job ({figures['workers']} workers read and decode in parallel; the writer threads pack "
                  "and write in parallel with the main thread): " + ", ".join(
                      f"{k} {v:.2f}" for k, v in f["job_parts_ms"].items()))
            print(f"  estimator alone {1e3 / f['alone']:.2f}, the job {1e3 / f['steady']:.2f} (steady)")
    gap = figures["decode_gap"]
    rel = ", ".join(f"{k.split('/')[1]} {v:.2e}" for k, v in gap.items() if k.startswith("rel_l2/"))
    print(f"JPEG decode, {gap['decoders']} on {device}: max |difference| {gap['max']:.0f} levels, "
          f"{gap['share']:.2%} of values differ; tiny's maps, relative L2: {rel} (target 0: one cache key)")
    sq, coco = _shape_bytes(518, 518, ["path_4", "path_3"]), _shape_bytes(518, 686, ["path_4", "path_3"])
    print("\nbytes per image (vits, 64 channels; depth at input/4)")
    head = ["518x518 fp16", "518x686 fp16", "stored fp16", "stored int8", "int8 err"]
    print(f"{'map':<8} {head[0]:>13} {head[1]:>13} {head[2]:>12} {head[3]:>12} {head[4]:>9}")
    for n in ["depth", "path_4", "path_3"]:
        s16 = info16["maps"].get(n, {}).get("stored_bytes_per_image")
        s8 = info8["maps"].get(n, {}).get("stored_bytes_per_image")
        e = figures["int8_rel_err"].get(n)
        print(f"{n:<8} {sq[n]:>13,} {coco[n]:>13,} {_fmt(s16):>12} {_fmt(s8):>12} {'' if e is None else f'{e:.2%}':>9}")
    default = ["depth", *levels]
    t16 = sum(info16["maps"][n]["stored_bytes_per_image"] for n in default)
    t8 = sum(info8["maps"][n]["stored_bytes_per_image"] for n in default)
    print(f"{'default':<8} {sum(sq[n] for n in default):>13,} {sum(coco[n] for n in default):>13,} "
          f"{_fmt(t16):>12} {_fmt(t8):>12}   (depth + {'+'.join(levels)})")
    print("\nrandom single-image reads (img/s)       .npy    cache  ratio")
    for label, a, b in [("1 process", "npy_1p", "cache_1p"), ("2 DataLoader workers", "npy_2w", "cache_2w")]:
        print(f"{label:<37}{r[a]:7.0f} {r[b]:8.0f} {r[b] / r[a]:6.2f}")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def run_fingerprint_bench(images: int = 100_000, hashed: int = 2_000, file_kb: int = 160,
                          work_dir: str | None = None) -> dict:  # fmt: skip
    """What binding entries to their files costs at training start (`fingerprint.check_files`, the loop
    `CacheReader.check_sources` runs when a dataset is built), side by side:

    - `images` untouched files (the fast path: one stat per image; file size does not matter);
    - `hashed` copied files of `file_kb` KiB (new paths and mtimes: the 3 x 16 KiB content hash per
      image), scaled to `images`; the files were just written, so they are in the page cache (a cold
      disk adds its read time: 48 KiB per image).
    """
    from dgseg.depth_cache.fingerprint import check_files, fingerprint

    tmp = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="bench_fp_"))
    rng = np.random.default_rng(0)
    small = tmp / "untouched"
    small.mkdir(parents=True, exist_ok=True)
    blob = rng.integers(0, 255, 1024, dtype=np.uint8).tobytes()
    files = {}
    for i in range(images):
        path = small / f"{i:07d}.jpg"
        path.write_bytes(blob + i.to_bytes(8, "little"))
        files[str(i)] = str(path)
    t = time.perf_counter()
    sources = {i: fingerprint(p) for i, p in files.items()}
    t_record = time.perf_counter() - t
    t = time.perf_counter()
    problems, unbound = check_files(files, sources)
    t_fast = time.perf_counter() - t
    assert not problems and not unbound

    big, copy = tmp / "big", tmp / "copy"
    big.mkdir(exist_ok=True)
    copy.mkdir(exist_ok=True)
    files_big, files_copy = {}, {}
    for i in range(hashed):
        data = rng.integers(0, 255, file_kb * 1024, dtype=np.uint8).tobytes()
        (big / f"{i:07d}.jpg").write_bytes(data)
        (copy / f"{i:07d}.jpg").write_bytes(data)  # a copy: same bytes, another path and mtime
        files_big[str(i)], files_copy[str(i)] = str(big / f"{i:07d}.jpg"), str(copy / f"{i:07d}.jpg")
    sources_big = {i: fingerprint(p) for i, p in files_big.items()}
    t = time.perf_counter()
    problems, _ = check_files(files_copy, sources_big)
    t_hash = time.perf_counter() - t
    assert not problems
    per_fast, per_hash = t_fast / images, t_hash / hashed
    figures = {"images": images, "fast_s": t_fast, "fast_us": per_fast * 1e6, "record_us": t_record / images * 1e6,
               "hash_ms": per_hash * 1e3, "hash_s_scaled": per_hash * images, "ratio": per_hash / per_fast}  # fmt: skip
    print("\n== binding cache entries to their files: check at training start (fingerprint.check_files) ==")
    print(f"untouched files, {images:,} images (one stat each):    {t_fast:7.2f} s  "
          f"({figures['fast_us']:.1f} us/image)")
    print(f"copied/moved dataset, {file_kb} KiB files (hash 3x16 KiB): {figures['hash_ms']:7.3f} ms/image "
          f"-> {figures['hash_s_scaled']:.1f} s for {images:,} images (page cache warm; {hashed:,} measured)")
    print(f"ratio hash / fast path: {figures['ratio']:.1f}x")
    if not work_dir:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures
