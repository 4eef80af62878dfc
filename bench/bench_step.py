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


def run_bench(steps: int = 20, warmup: int = 3, image_size: int = 128, batch_size: int = 8,
              estimator: str = "tiny", weights: str | None = None, input_size: int = 126,
              device: str = "auto", work_dir: str | None = None, workers: int = 2) -> dict[str, float]:
    from depth_cache.images import merge_records, records_from_json
    from depth_cache.precompute import run_precompute
    from pipeline.config_io import load_config
    from pipeline.data.splits import make_splits
    from pipeline.data.synthetic import generate_dataset
    from pipeline.engine.trainer import train_supervised

    root = Path(work_dir or tempfile.mkdtemp(prefix="bench_step_"))
    if not (root / "annotations/train.json").is_file():
        generate_dataset(root, num_train=64, num_val=8, size=image_size, seed=0)
        make_splits(root / "annotations/train.json", root / "splits", percents=[100.0], seeds=[0],
                    unlabeled_includes_labeled=False)
    base = [
        f"data.image_dir={root}/images/train", f"data.train_json={root}/splits/train_100pct_seed0_labeled.json",
        "data.unlabeled_list=null", f"data.val_image_dir={root}/images/val",
        f"data.val_json={root}/annotations/val.json", f"data.image_size={image_size}",
        f"data.test_size={image_size}", f"data.num_workers={workers}",
        f"depth.estimator.name={estimator}", f"depth.estimator.input_size={input_size}",
        f"depth.estimator.device={device}", f"depth.cache.root={root}/caches", "depth.cache.levels=[path_4, path_3]",
        "model.depth_fusion.sources={res2: path_3, res3: path_3, res4: path_4, res5: path_4}",
        f"train.batch_size={batch_size}", f"train.max_iter={warmup + steps}", "train.log_period=1",
        "train.eval_period=0", f"train.checkpoint_period={10**9}", f"train.device={device}",
    ]
    if weights:
        base.append(f"depth.estimator.weights={weights}")
    cfg = load_config(None, base)
    records = merge_records([records_from_json(Path(cfg.data.train_json), Path(cfg.data.image_dir)),
                             records_from_json(Path(cfg.data.val_json), Path(cfg.data.val_image_dir))])
    run_precompute(records, cfg.depth.estimator, cfg.depth.cache, progress=False)
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
