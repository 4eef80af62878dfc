"""Paper scale on one GPU, every figure beside its target: `bench/gpu_check.sh` (or `--cpu --quick`).

Parts, each timed and isolated (one that fails prints its error and the rest still run):
1. cache: precompute img/s against the estimator alone (tiny; vits with `--vits`, the GPU default),
   and the decode gap of the two decoders a host could give one cache (relative L2 of depth and features);
2. step: cached-depth step / no-depth step (supervised loop, resnet50 on a GPU);
3. semi: a stage-B step's parts: host-side share, "other" share, peak memory per part;
4. accumulation: a step of 2 micro-batches against the sum of its micro-steps (two steps of half the batch);
5. memory at 1024: stage B at the recipe's 16 + 16 with accumulation and activation checkpointing;
6. dry run: `configs/coco_5pct.yaml` as shipped but for paths and iteration counts, on a generated
   COCO-shaped set, at the recipe's batch (16 + 16), with the accumulation and checkpointing of part 5.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HF_M2F_R50_GB_PER_IMAGE = 74 / 16  # Hugging Face Mask2Former-R50, 1024 px, 16 images + teacher on 8 (NOTES)


@dataclass
class Sizes:
    device: str
    cache_images: int
    vits: bool
    step_size: int
    step_batch: int
    backbone: str
    steps: int
    big_size: int
    big_batch: int
    dry_iters: int


def sizes(cpu: bool, quick: bool) -> Sizes:
    if cpu or quick:  # toy sizes: every part runs, none of the figures means anything
        return Sizes("cpu" if cpu else "cuda", 16, False, 64, 4, "resnet18", 2, 128, 4, 2)
    return Sizes("cuda", 512, True, 512, 16, "resnet50", 10, 1024, 16, 3)


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, figure: str, value: str, target: str, ok: bool | None) -> None:
        self.rows.append((figure, value, target, "-" if ok is None else ("yes" if ok else "NO")))
        print(f"  {figure}: {value}   (target {target})", flush=True)

    def print(self) -> None:
        w = max(len(r[0]) for r in self.rows) if self.rows else 10
        print("\n== GPU scale: figures beside their targets ==")
        print(f"{'figure':<{w}}  {'value':>24}  {'target':<34} met")
        for f, v, t, ok in self.rows:
            print(f"{f:<{w}}  {v:>24}  {t:<34} {ok}")


def part_cache(s: Sizes, work: Path, rep: Report) -> None:
    from dgseg.bench.bench_cache import run_bench

    fig = run_bench(images=s.cache_images, device=s.device, vits=s.vits, work_dir=str(work / "cache"),
                    batch_size=32 if s.vits else 8, reads=64)  # fmt: skip
    for key in ("tiny", "vits"):
        if key in fig:
            f = fig[key]
            ratio = f["steady"] / f["alone"]
            value = f"{ratio:.2f} ({f['steady']:.0f}/{f['alone']:.0f} img/s)"
            rep.add(f"precompute / estimator alone, {key} (steady)", value, ">= 0.8 (vits on a GPU)",
                    ratio >= 0.8 if key == "vits" else None)
    gap = fig["decode_gap"]
    rel = max(v for k, v in gap.items() if k.startswith("rel_l2/"))
    rep.add(f"decode gap {gap['decoders']}: max pixel / worst map rel L2", f"{gap['max']:.0f} / {rel:.2e}",
            "0 within a key (nvjpeg is keyed)", None)


def part_step(s: Sizes, work: Path, rep: Report) -> None:
    from dgseg.bench.bench_step import run_bench

    t = run_bench(steps=s.steps, warmup=3, image_size=s.step_size, batch_size=s.step_batch, device=s.device,
                  work_dir=str(work / "step"), workers=8 if s.device == "cuda" else 0, backbone=s.backbone,
                  input_size=126)  # fmt: skip
    ratio = t["cache"] / t["none"]
    rep.add(f"cached-depth step / no-depth step ({s.step_size} px, {s.backbone}, batch {s.step_batch})",
            f"{ratio:.3f}", "<= 1.05", ratio <= 1.05)


def _semi(s: Sizes, work: Path, name: str, size: int, batch: int, **kw) -> dict:
    from dgseg.bench.bench_step import run_semi_bench

    return run_semi_bench(steps=s.steps, warmup=2, image_size=size, batch_size=batch, device=s.device,
                          work_dir=str(work / name), workers=8 if s.device == "cuda" else 0, backbone=s.backbone,
                          input_size=126, teacher_iters=2, **kw)  # fmt: skip


def part_semi(s: Sizes, work: Path, rep: Report) -> None:
    from dgseg.bench.bench_step import HOST_PARTS, PARTS

    p = _semi(s, work, "semi", s.step_size, s.step_batch)
    host = sum(p.get(k, 0.0) for k in HOST_PARTS) / p["step"]
    other = (p["step"] - p["data"] - sum(p.get(k, 0.0) for k in PARTS)) / p["step"]
    rep.add(f"stage-B step ({s.step_size} px, {s.step_batch}+{s.step_batch})", f"{p['step']:.3f} s", "-", None)
    rep.add("stage-B host-side share", f"{host:.1%}", "<= 10 %", host <= 0.10)
    rep.add("stage-B other share", f"{other:.1%}", "<= 3 %", other <= 0.03)
    if "peak_per_image_gb" in p:
        rep.add("stage-B peak memory per trained image", f"{p['peak_per_image_gb']:.2f} GB", "-", None)


def part_accumulation(s: Sizes, work: Path, rep: Report) -> None:
    half = _semi(s, work, "acc1", s.step_size, s.step_batch // 2)
    whole = _semi(s, work, "acc2", s.step_size, s.step_batch, accumulate=2)
    ratio = whole["step"] / (2 * half["step"])
    rep.add(f"step of 2 micro-batches / 2 steps of {s.step_batch // 2}", f"{ratio:.3f}", "<= 1.05", ratio <= 1.05)


def part_memory(s: Sizes, work: Path, rep: Report) -> None:
    p = _semi(s, work, "big", s.big_size, s.big_batch, accumulate=2, checkpointing=True)
    if "peak_per_image_gb" not in p:
        rep.add(f"peak at {s.big_size} px", "n/a (CPU)", "<= 80 GB", None)
        return
    peak = p["peak_per_image_gb"] * p["images"]
    rep.add(f"peak at {s.big_size} px, {s.big_batch}+{s.big_batch}, accumulate 2, checkpointing ({s.backbone})",
            f"{peak:.1f} GB", "<= 80 GB", peak <= 80)
    per = p["peak_per_image_gb"] / HF_M2F_R50_GB_PER_IMAGE
    rep.add("peak per trained image / HF Mask2Former-R50's", f"{per:.2f}x", "<= 1.5x", per <= 1.5)


def coco_like(root: Path, split: str, n: int, seed: int) -> Path:
    """`n` COCO-shaped JPEGs (640x480, every third portrait) with 1-3 rectangles, COCO polygon annotations and
    80 category ids with COCO's gaps (as tests/engine/test_engine_paper_dry_run.py makes them)."""
    from PIL import Image

    ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        h, w = (640, 480) if i % 3 == 2 else (480, 640)
        img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            y0, x0 = int(rng.integers(0, h - 200)), int(rng.integers(0, w - 200))
            y1, x1 = y0 + int(rng.integers(60, 200)), x0 + int(rng.integers(60, 200))
            img[y0:y1, x0:x1] = rng.integers(80, 255, 3)
            anns.append({"id": len(anns) + 1, "image_id": seed * 1000 + i, "category_id": ids[int(rng.integers(0, 80))],
                         "iscrowd": 0, "area": float((y1 - y0) * (x1 - x0)), "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
        name = f"{seed * 1000 + i:012d}.jpg"
        Image.fromarray(img).save(root / split / name, quality=90)
        images.append({"id": seed * 1000 + i, "file_name": name, "height": h, "width": w})
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(exist_ok=True)
    cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in ids]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def part_dry_run(s: Sizes, work: Path, rep: Report) -> None:
    import timm
    from dgseg.depth_cache.images import merge_records, records_from_json
    from dgseg.depth_cache.precompute import run_precompute
    from dgseg.pipeline.config.loading import load_config
    from dgseg.pipeline.data.splits import make_splits
    from dgseg.pipeline.train import train

    root = work / "dry"
    batch = s.big_batch
    train_json = coco_like(root, "train2017", 4 * batch, seed=1)
    val_json = coco_like(root, "val2017", 2, seed=2)
    make_splits(train_json, root / "splits", percents=[25.0], seeds=[0], unlabeled_includes_labeled=False)
    weights = root / f"{s.backbone}.pth"
    torch.save(timm.create_model(s.backbone, pretrained=False).state_dict(), weights)
    over = [
        f"data.image_dir={root}/train2017", f"data.val_image_dir={root}/val2017", f"data.val_json={val_json}",
        f"data.train_json={root}/splits/instances_train2017_25pct_seed0_labeled.json",
        f"data.unlabeled_list={root}/splits/instances_train2017_25pct_seed0_unlabeled.json",
        f"depth.cache.root={root}/caches", f"model.backbone={s.backbone}", f"model.backbone_weights={weights}",
        f"train.output_dir={root}/run", f"semi.teacher_iters={s.dry_iters}", f"train.max_iter={2 * s.dry_iters}",
        "semi.burn_in_iter=1", "train.checkpoint_period=0", "train.eval_period=0", "train.log_period=1",
        "depth.estimator.name=tiny", "depth.estimator.weights=null", f"depth.estimator.device={s.device}",
        f"train.device={s.device}", f"train.batch_size={batch}", f"semi.unlabeled_batch_size={batch}",
        "train.accumulate=2", "model.activation_checkpointing=true", "semi.score_threshold=0.0",
        "data.num_workers=8" if s.device == "cuda" else "data.num_workers=0", "depth.cache.num_workers=0",
    ]
    if s.device == "cpu":  # the toy size on a CPU (the recipe's model and canvas would take hours there)
        over += ["data.image_size=128", "data.test_size=128", "model.hidden_dim=32", "model.mask_dim=32",
                 "model.num_queries=10", "model.nheads=2", "model.dim_feedforward=64", "model.dec_layers=2",
                 "model.enc_layers=1", "model.train_num_points=256", "depth.estimator.input_size=56"]
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "coco_5pct.yaml", over)
    records = merge_records([records_from_json(train_json, root / "train2017"),
                             records_from_json(val_json, root / "val2017")])
    run_precompute(records, cfg.depth.estimator, cfg.depth.cache, progress=False)
    if s.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    train(cfg)
    took = time.perf_counter() - t
    value = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GB" if s.device == "cuda" else "n/a (CPU)"
    rep.add(f"dry run coco_5pct, {batch}+{batch} at {cfg.data.image_size} px, accumulate 2, checkpointing: peak",
            value, "<= 80 GB", torch.cuda.max_memory_allocated() <= 80 * 2**30 if s.device == "cuda" else None)
    rep.add("dry run time (both stages)", f"{took:.0f} s for {2 * s.dry_iters} steps", "-", None)


PARTS = {"cache": part_cache, "step": part_step, "semi": part_semi, "accumulation": part_accumulation,
         "memory": part_memory, "dry_run": part_dry_run}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (to check the script itself)")
    ap.add_argument("--quick", action="store_true", help="toy sizes for every part")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--work-dir", default="/tmp/dgseg_gpu_check")
    args = ap.parse_args(argv)
    s = sizes(args.cpu, args.quick)
    if s.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; use --cpu --quick to check the script on a CPU")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rep, failed = Report(), []
    for name in args.parts.split(","):
        if name not in PARTS:
            raise SystemExit(f"gpu_check: unknown part {name!r}; choose from {', '.join(PARTS)}")
        print(f"\n### part {name}", flush=True)
        t = time.perf_counter()
        try:
            PARTS[name](s, work, rep)
        except Exception as err:  # one part's failure (an OOM) must not hide the others' figures
            traceback.print_exc()
            rep.add(f"part {name}", f"FAILED: {type(err).__name__}", "runs", False)
            failed.append(name)
        if s.device == "cuda":
            torch.cuda.empty_cache()
        print(f"### part {name}: {time.perf_counter() - t:.0f} s", flush=True)
    rep.print()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
