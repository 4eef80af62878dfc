"""Training-step time with cached depth, online depth and no depth, side by side: `python cli.py bench step`.

All three run the real training loop (`pipeline.engine.trainer.train_supervised`: DataLoader,
transforms, model, criterion, AdamW) on the same generated images with the same segmenter:
- `none`: no depth, Depth Fusion off;
- `cache`: Depth Fusion fed from the depth cache (the DataLoader reads it; no depth inference);
- `online`: Depth Fusion fed by the estimator running inside every step (the paper's setting).
The cache is made first by the same estimator (`tiny` on a CPU; any DAv2 size with `--estimator`
and `--weights`). Step time is the mean over the timed steps after `warmup` steps, from the run's
own log; ratios are against `none`. The `data wait` column is the part of a step spent waiting
for the DataLoader (`data_time` in the log): where it is large the loader, not the model, sets the
pace, and more `--workers` (or a faster cache read) is the remedy, not a faster GPU.

`--semi` times the teacher-student loop instead (`pipeline.semi.trainer.train_semi`, stage B, the
full method: cached depth, RGB and depth pseudo-labels, Depth Controller) with `train.time_parts`
on, and prints where a stage-B step's time goes: data wait, the labelled forward and loss, the
teacher's two forwards, pseudo-label filtering, strong augmentation, the student's forward, the
unlabelled losses, matching (inside the two loss parts), the agreement and controller, backward and
optimiser step, EMA. On CUDA every part is bracketed by synchronisations (so a part is charged for
its own kernels); that makes the timed steps somewhat slower than untimed ones. "host-side" sums
the parts that are host work (pseudo-labels, augmentation, matching, controller).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def _per_step(run_dir: Path, warmup: int) -> tuple[float, float]:
    """(seconds per step, seconds of DataLoader wait per step) over the steps after `warmup`."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = {r["iter"]: r for r in (json.loads(s) for s in lines if s.strip()) if "time" in r}
    first, last = rows[warmup], rows[max(rows)]
    n = last["iter"] - warmup
    return (last["time"] - first["time"]) / n, (last["data_time"] - first["data_time"]) / n


# parts of a stage-B step, in the order they run; "matching" runs inside "labelled" and "unsup_loss"
PARTS = ["depth", "labelled", "teacher", "pseudo_labels", "augment", "student_forward", "unsup_loss",
         "controller", "backward_step", "ema"]
HOST_PARTS = ["pseudo_labels", "augment", "matching", "controller"]


def _parts_per_step(run_dir: Path, start: int) -> dict[str, float]:
    """Seconds per step of every timed part (and `step`, `data`) over the logged steps after `start`."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = {r["iter"]: r for r in (json.loads(s) for s in lines if s.strip()) if "time" in r}
    first, last = rows[start], rows[max(rows)]
    n = last["iter"] - start
    out = {"step": (last["time"] - first["time"]) / n, "data": (last["data_time"] - first["data_time"]) / n}
    for k, v in last.items():
        if k.startswith("time/"):
            out[k[5:]] = (v - first.get(k, 0.0)) / n
        elif k.startswith(("mem/", "mem_rise/")):  # the most over the run (CUDA only)
            out[k] = v
    return out


def _setup(root: Path, image_size: int, batch_size: int, estimator: str, weights: str | None, input_size: int,
           device: str, workers: int, steps: int, backbone: str = "resnet18") -> list[str]:  # fmt: skip
    """Generated data, splits and config overrides shared by both modes."""
    from dgseg.pipeline.data.splits import make_splits
    from dgseg.pipeline.data.synthetic import generate_dataset

    if not (root / "annotations/train.json").is_file():
        generate_dataset(root, num_train=64, num_val=8, size=image_size, seed=0)
    if not (root / "splits/train_25pct_seed0_unlabeled.json").is_file():
        make_splits(root / "annotations/train.json", root / "splits", percents=[100.0, 25.0], seeds=[0],
                    unlabeled_includes_labeled=False)
    base = [
        f"data.image_dir={root}/images/train", f"data.train_json={root}/splits/train_100pct_seed0_labeled.json",
        "data.unlabeled_list=null", f"data.val_image_dir={root}/images/val",
        f"data.val_json={root}/annotations/val.json", f"data.image_size={image_size}",
        f"data.test_size={image_size}", f"data.num_workers={workers}",
        f"depth.estimator.name={estimator}", f"depth.estimator.input_size={input_size}",
        f"depth.estimator.device={device}", f"depth.cache.root={root}/caches", "depth.cache.levels=[path_4, path_3]",
        "model.depth_fusion.sources={res2: path_3, res3: path_3, res4: path_4, res5: path_4}",
        f"train.batch_size={batch_size}", f"train.max_iter={steps}", "train.log_period=1",
        "train.eval_period=0", f"train.checkpoint_period={10**9}", f"train.device={device}",
    ]
    if weights:
        base.append(f"depth.estimator.weights={weights}")
    return base + [f"model.backbone={backbone}"]


def _precompute(base: list[str], extra_lists: list[str] = ()) -> None:
    from dgseg.depth_cache.images import merge_records, records_from_json
    from dgseg.depth_cache.precompute import run_precompute
    from dgseg.pipeline.config.loading import load_config

    cfg = load_config(None, base)
    groups = [records_from_json(Path(cfg.data.train_json), Path(cfg.data.image_dir)),
              records_from_json(Path(cfg.data.val_json), Path(cfg.data.val_image_dir))]
    groups += [records_from_json(Path(p), Path(cfg.data.image_dir)) for p in extra_lists]
    run_precompute(merge_records(groups), cfg.depth.estimator, cfg.depth.cache, progress=False)


def run_bench(steps: int = 20, warmup: int = 3, image_size: int = 128, batch_size: int = 8,
              estimator: str = "tiny", weights: str | None = None, input_size: int = 126,
              device: str = "auto", work_dir: str | None = None, workers: int = 2,
              backbone: str = "resnet18") -> dict[str, float]:  # fmt: skip
    from dgseg.pipeline.config.loading import load_config
    from dgseg.pipeline.engine.trainer import train_supervised

    root = Path(work_dir or tempfile.mkdtemp(prefix="bench_step_"))
    base = _setup(root, image_size, batch_size, estimator, weights, input_size, device, workers, warmup + steps,
                  backbone)
    _precompute(base)
    modes = {
        "none": ["depth.mode=none", "model.depth_fusion.enabled=false"],
        "cache": ["depth.mode=cache"],
        "online": ["depth.mode=online"],
    }
    times, waits = {}, {}
    for mode, over in modes.items():
        run = root / f"run_{mode}"
        if run.exists():
            for f in run.iterdir():
                f.unlink()
        train_supervised(load_config(None, base + over + [f"train.output_dir={run}"]))
        times[mode], waits[mode] = _per_step(run, warmup)
    print(f"\ntraining step, {batch_size} images of {image_size}px, estimator {estimator} "
          f"(input {input_size}), {steps} timed steps after {warmup}, {workers} loader workers:")
    print(f"{'depth':<8}{'s/step':>10}{'x none':>10}{'data wait':>11}")
    for mode, t in times.items():
        print(f"{mode:<8}{t:>10.3f}{t / times['none']:>10.3f}{waits[mode]:>11.3f}")
    return times


def run_semi_bench(steps: int = 10, warmup: int = 3, image_size: int = 128, batch_size: int = 8,
                   estimator: str = "tiny", weights: str | None = None, input_size: int = 126,
                   device: str = "auto", work_dir: str | None = None, workers: int = 2,
                   teacher_iters: int = 2, backbone: str = "resnet18", accumulate: int = 1,
                   checkpointing: bool = False, extra: list[str] = ()) -> dict[str, float]:  # fmt: skip
    """Stage-B step breakdown of the teacher-student loop (labelled and unlabelled batches of `batch_size`).

    The teacher trains `teacher_iters` steps first: a barely trained one finds few pseudo-labels
    (the printed count says how busy the pseudo-label and matching parts were)."""
    from dgseg.pipeline.config.loading import load_config
    from dgseg.pipeline.semi.trainer import train_semi

    root = Path(work_dir or tempfile.mkdtemp(prefix="bench_step_"))
    base = _setup(root, image_size, batch_size, estimator, weights, input_size, device, workers,
                  teacher_iters + warmup + steps, backbone)
    unl = root / "splits/train_25pct_seed0_unlabeled.json"
    base = [o for o in base if not o.startswith(("data.train_json=", "data.unlabeled_list="))] + [
        f"data.train_json={root}/splits/train_25pct_seed0_labeled.json", f"data.unlabeled_list={unl}",
        "depth.mode=cache", "semi.enabled=true", f"semi.teacher_iters={teacher_iters}",
        f"semi.unlabeled_batch_size={batch_size}", "semi.burn_in_iter=1", "semi.depth_pseudo_labels=true",
        # a random-init teacher is unsure of everything: a low threshold keeps the pseudo-label path busy
        "semi.score_threshold=0.05", "train.time_parts=true", f"train.accumulate={accumulate}",
        f"model.activation_checkpointing={checkpointing}", *extra,
    ]
    _precompute(base, [str(unl)])
    run = root / "run_semi"
    if run.exists():
        for f in run.iterdir():
            f.unlink()
    train_semi(load_config(None, base + [f"train.output_dir={run}"]))
    parts = _parts_per_step(run, teacher_iters + warmup)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    timed = [r for r in rows if r.get("iter", 0) > teacher_iters + warmup and "pseudo/rgb_per_image" in r]
    parts["pseudo_per_image"] = sum(r["pseudo/rgb_per_image"] for r in timed) / max(1, len(timed))
    parts["images"] = 2 * batch_size
    _print_parts(parts, batch_size, image_size, estimator, input_size, steps, warmup, workers)
    print(f"train.accumulate {accumulate}, model.activation_checkpointing {checkpointing}")
    return parts


def _print_parts(parts, batch_size, image_size, estimator, input_size, steps, warmup, workers) -> None:
    step = parts["step"]
    print(f"\nteacher-student stage-B step, {batch_size} labelled + {batch_size} unlabelled images of {image_size}px, "
          f"cached depth from {estimator} (input {input_size}), {steps} timed steps after {warmup}, "
          f"{workers} loader workers:")
    cuda = any(k.startswith("mem/") for k in parts)
    print(f"{'part':<34}{'s/step':>10}{'share':>8}{'peak GB':>10}{'rise GB':>10}")
    rows = [("data wait", parts["data"])] + [(p, parts.get(p, 0.0)) for p in PARTS]
    for name, t in rows:
        print(f"{name:<34}{t:>10.4f}{t / step:>8.1%}{_gb(parts, 'mem/' + name, cuda):>10}"
              f"{_gb(parts, 'mem_rise/' + name, cuda):>10}")
    print(f"{'  matching (in labelled, unsup_loss)':<34}{parts.get('matching', 0.0):>10.4f}"
          f"{parts.get('matching', 0.0) / step:>8.1%}")
    other = step - sum(t for _, t in rows)
    print(f"{'other (logging, batch to device)':<34}{other:>10.4f}{other / step:>8.1%}")
    print(f"{'step':<34}{step:>10.4f}{1:>8.1%}")
    print(f"RGB pseudo-labels per unlabelled image (timed steps): {parts['pseudo_per_image']:.1f}")
    host = sum(parts.get(p, 0.0) for p in HOST_PARTS)
    print(f"host-side parts ({', '.join(HOST_PARTS)}): {host:.4f} s/step = {host / step:.1%} of the step "
          "(target <= 10 %)")
    print(f"other: {other / step:.1%} of the step (target <= 3 %)")
    if cuda:
        peak = max(v for k, v in parts.items() if k.startswith("mem/"))
        parts["peak_per_image_gb"] = peak / 2**30 / parts["images"]
        print(f"peak memory of the step {peak / 2**30:.2f} GB = {parts['peak_per_image_gb']:.3f} GB per trained "
              f"image ({parts['images']} images; target <= 1.5x Hugging Face Mask2Former-R50's 74 GB / 16 = 4.6 GB)")
    else:
        print("peak memory per part: n/a (CPU): torch.cuda.max_memory_allocated exists on CUDA only")


def _gb(parts: dict, key: str, cuda: bool) -> str:
    if not cuda:
        return "n/a (CPU)" if key.startswith("mem/") else ""
    return f"{parts[key] / 2**30:.2f}" if key in parts else "-"
