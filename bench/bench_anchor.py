"""Side by side: torchvision's Mask R-CNN anchor (RGB, depth, RGB + depth) and the project's model.

`python cli.py bench anchor --config C [--iters N] [--batch-size B] [--modes rgb,depth,rgbd]
[--project/--no-project] [--equal-time MODE] [a.b=c ...]`: every run uses the config's labelled data
(`data.train_json`), its val split and its depth cache, the same number of iterations and batch
size (the config's `train.max_iter` / `train.batch_size` unless given), and is scored by the
project's COCO mask AP evaluator. The project's run is its real supervised trainer
(`pipeline.train.train` on a copy of the config with `semi.enabled=false`), so Depth
Fusion is on when the config enables it. Wall time is the whole run: building data and model,
training, and one evaluation of the val split; s/it is the training loop alone.
Writes every run's output under `--out` and the table as `anchor_bench.json`.

`--equal-time MODE` compares at equal training time instead of equal iterations: the anchors run
first, then a short probe run of the project measures its seconds per iteration, and the project
trains for as many iterations as fit in the MODE anchor's training time (its LR schedule spans
those iterations, so it is a complete run, not a cut-off one). The probe's time is reported
apart and is not charged to the project's row. A short probe cannot follow a CPU whose speed drifts
over minutes (on the 2-core CPU of the README a 12-step probe missed a 15-minute run's time by 15-20 %,
both ways), so when the project's training time misses the anchor's by more than `--time-tolerance`,
the project trains once more, its iterations rescaled by the first run's own s/it; both rows are
kept and the one nearer the anchor's time is the table's reference.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch
from dgseg.pipeline.baselines.adapter import needs_depth
from dgseg.pipeline.baselines.maskrcnn import check_mode
from dgseg.pipeline.config import Config
from dgseg.pipeline.engine.distributed import pick_device

MODE_LABELS = {"rgb": "Mask R-CNN R18-FPN, RGB", "depth": "Mask R-CNN R18-FPN, depth",
               "rgbd": "Mask R-CNN R18-FPN, RGB + depth (4 ch)"}  # fmt: skip


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    for m in modes:
        check_mode(m)
    if len(set(modes)) != len(modes):
        raise ValueError(f"--modes lists a mode twice: {text!r}")
    return modes


def project_config(cfg: Config, iters: int, batch_size: int, device: str, out_dir: Path) -> Config:
    """A copy of `cfg` for the project's supervised run at the bench's budget, output under `out_dir`."""
    p = copy.deepcopy(cfg)
    p.semi.enabled = False
    p.train.max_iter, p.train.batch_size, p.train.device = iters, batch_size, device
    p.train.output_dir = str(out_dir)
    p.train.eval_period = 0  # one evaluation, at the last step, like the anchor's
    p.train.checkpoint_period = 0  # one checkpoint, at the last step
    return p


PROBE_WARMUP = 3  # the probe's first steps (allocation, loader start) are left out of its s/it


def probe_seconds_per_iter(cfg: Config, iters: int, out_dir: Path) -> tuple[float, float]:
    """(seconds per training iteration after the first PROBE_WARMUP, wall seconds of the probe) of a short run
    of the project's real trainer on `cfg`; `iters` must exceed PROBE_WARMUP."""
    from dgseg.pipeline.train import train

    if iters <= PROBE_WARMUP:
        raise ValueError(f"bench anchor: the probe needs more than {PROBE_WARMUP} iterations (got {iters})")
    p = copy.deepcopy(cfg)
    p.train.max_iter, p.train.log_period, p.train.output_dir = iters, 1, str(out_dir)
    p.train.warmup_iters = min(p.train.warmup_iters, iters - 1)
    t0 = time.perf_counter()
    train(p)
    wall = time.perf_counter() - t0
    logged = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = {r["iter"]: r["time"] for r in logged if "time" in r}
    return (times[iters] - times[PROBE_WARMUP]) / (iters - PROBE_WARMUP), wall


def equal_time_iters(budget_s: float, s_per_it: float) -> int:
    """Iterations of `s_per_it` seconds that fit in `budget_s` seconds (at least one)."""
    if not (math.isfinite(s_per_it) and s_per_it > 0):
        raise ValueError(f"bench anchor: cannot size an equal-time run from {s_per_it} s per iteration")
    return max(1, round(budget_s / s_per_it))


def rerun_iters(budget_s: float, iters: int, train_s: float, tolerance: float) -> Optional[int]:
    """Iterations for a second equal-time run when a run of `iters` iterations trained `train_s` seconds
    against a budget of `budget_s`: None when it missed by at most `tolerance` (relative) or when the
    rescaled count is the same."""
    if abs(train_s / budget_s - 1) <= tolerance:
        return None
    n = equal_time_iters(budget_s, train_s / iters)
    return None if n == iters else n


def run_project(cfg: Config) -> dict:
    """Train the project's model on `cfg` (supervised) and return its row."""
    from dgseg.pipeline.engine.trainer import final_eval_dir
    from dgseg.pipeline.evaluation import save_metrics
    from dgseg.pipeline.train import train

    t0 = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - t0
    out = Path(cfg.train.output_dir)
    save_metrics(metrics, out / "metrics.json")
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    loop_s = max((r["time"] for r in logged if "time" in r), default=float("nan"))
    predictions = final_eval_dir(out) / "coco_results.json"  # the trainer's last evaluation keeps them
    fusion = "+ Depth Fusion" if cfg.model.depth_fusion.enabled else "RGB"
    return {"method": f"project: Mask2Former {cfg.model.backbone}, supervised {fusion}", "iters": cfg.train.max_iter,
            "batch": cfg.train.batch_size, "AP": metrics.get("AP", float("nan")),
            "AP50": metrics.get("AP50", float("nan")), "s_per_it": loop_s / cfg.train.max_iter, "wall_s": wall,
            "train_s": loop_s, **mask_and_class(cfg.data.val_json, predictions), "out": str(out)}  # fmt: skip


def run_anchor(cfg: Config, mode: str, reader, iters: int, batch_size: int, device: torch.device, out_dir: Path,
               norm: str) -> dict:  # fmt: skip
    from dgseg.pipeline.baselines.loop import train_anchor

    t0 = time.perf_counter()
    run = train_anchor(cfg, mode, reader if needs_depth(mode) else None, iters, batch_size, device, out_dir, norm)
    wall = time.perf_counter() - t0
    label = MODE_LABELS[mode] + ("" if norm == "bn" else f", {norm} BN")
    return {"method": label, "iters": iters, "batch": batch_size, "AP": run.metrics.get("AP", float("nan")),
            "AP50": run.metrics.get("AP50", float("nan")), "s_per_it": run.train_s / iters, "wall_s": wall,
            "train_s": run.train_s, "mode": mode,
            **mask_and_class(cfg.data.val_json, Path(out_dir) / "results.json"), "out": str(out_dir)}  # fmt: skip


def mask_and_class(val_json: str | Path, results_json: Path) -> dict:
    """A run's val predictions, masks apart from classes: class-agnostic mask AP, the share of instances
    found (a prediction of any class at mask IoU >= 0.5) and, of those, the share whose best-scored
    prediction has the right class."""
    from dgseg.pipeline.evaluation.class_hits import instance_class_hits
    from dgseg.pipeline.evaluation.coco_eval import evaluate_segm, load_coco_gt

    gt = load_coco_gt(val_json)
    results = json.loads(results_json.read_text())
    hits = instance_class_hits(gt, results)
    return {"agnostic_AP": evaluate_segm(gt, results, class_agnostic=True)["AP"], "found": hits["found"],
            "right_class": hits["right_class"]}  # fmt: skip


def _ratio(a: float, b: float) -> str:
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return "-"
    return f"{a / b:.2f}"


def format_table(rows: list[dict], reference: int) -> str:
    """The rows as a Markdown table; ratios are each row's AP and wall time over row `reference`'s."""
    ref = rows[reference]
    head = (f"| method | iters | batch | mask AP | AP50 | class-agnostic AP | found | right class | s/it "
            f"| wall time | AP / {ref['method'].split(':')[0]} | time / {ref['method'].split(':')[0]} |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for r in rows:
        lines.append(f"| {r['method']} | {r['iters']} | {r['batch']} | {r['AP']:.2f} | {r['AP50']:.2f} "
                     f"| {r.get('agnostic_AP', nan):.2f} | {100 * r.get('found', nan):.0f} % "
                     f"| {100 * r.get('right_class', nan):.0f} % "
                     f"| {r['s_per_it']:.3f} | {r['wall_s'] / 60:.1f} min | {_ratio(r['AP'], ref['AP'])} "
                     f"| {_ratio(r['wall_s'], ref['wall_s'])} |")  # fmt: skip
    return "\n".join(lines)


def run_bench(cfg: Config, iters: Optional[int] = None, batch_size: Optional[int] = None,
              modes: tuple[str, ...] = ("rgb", "depth", "rgbd"), project: bool = True, device: str = "cpu",
              out_dir: str | Path = "runs/bench_anchor", norm: str = "bn", equal_time: Optional[str] = None,
              probe_iters: int = 12, time_tolerance: float = 0.05) -> list[dict]:  # fmt: skip
    """Run the anchors (and the project's model), print the table, write `anchor_bench.json`; returns the rows.

    With `equal_time` (one of `modes`), the project runs last, for the iterations that fit in that anchor's
    training time, and once more if its time missed by more than `time_tolerance` (see the module's
    docstring)."""
    iters = cfg.train.max_iter if iters is None else iters
    batch_size = cfg.train.batch_size if batch_size is None else batch_size
    if not modes and not project:
        raise ValueError("bench anchor: nothing to run (no --modes and --no-project)")
    if equal_time is not None and (equal_time not in modes or not project):
        raise ValueError(f"bench anchor: --equal-time {equal_time} needs that mode in --modes ({','.join(modes)}) "
                         "and the project's run")  # fmt: skip
    if not time_tolerance >= 0:
        raise ValueError(f"bench anchor: --time-tolerance must be >= 0 (got {time_tolerance})")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"bench anchor: {out} is not empty (it holds an earlier bench's runs); "
                              "remove it or pass another --out")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    reader = None
    if any(needs_depth(m) for m in modes):
        from dgseg.depth_cache.reader import open_cache

        reader = open_cache(cfg.depth.cache.root, cfg.depth.estimator, cfg.depth.cache)
    rows: list[dict] = []
    threads = torch.get_num_threads()

    def record(row: dict) -> None:  # each finished run is kept, even if a later one fails or is stopped
        rows.append(row)
        (out / "anchor_bench.json").write_text(json.dumps({"rows": rows, "device": str(dev), "threads": threads},
                                                          indent=1))  # fmt: skip

    if project and equal_time is None:
        record(run_project(project_config(cfg, iters, batch_size, device, out / "project")))
    for mode in modes:
        record(run_anchor(cfg, mode, reader, iters, batch_size, dev, out / f"anchor_{mode}", norm))
    note = ""
    if equal_time is not None:
        budget = next(r["train_s"] for r in rows if r.get("mode") == equal_time)
        s_it, probe_wall = probe_seconds_per_iter(project_config(cfg, probe_iters, batch_size, device, out / "probe"),
                                                  probe_iters, out / "probe")  # fmt: skip
        n = equal_time_iters(budget, s_it)
        print(f"bench anchor: the {equal_time} anchor trained {budget:.0f} s; the project's probe measured "
              f"{s_it:.3f} s/it, so it trains {n} iterations")  # fmt: skip
        first = run_project(project_config(cfg, n, batch_size, device, out / "project"))
        record(first)
        projects = [first]
        again = rerun_iters(budget, n, first["train_s"], time_tolerance)
        if again is not None:
            print(f"bench anchor: the project trained {first['train_s']:.0f} s, not {budget:.0f} s; it trains "
                  f"again for {again} iterations at its measured {first['train_s'] / n:.3f} s/it")  # fmt: skip
            projects.append(run_project(project_config(cfg, again, batch_size, device, out / "project_rerun")))
            record(projects[-1])
        # the project's rows first, the one nearest the anchor's time on top: the table's reference
        projects.sort(key=lambda r: abs(r["train_s"] - budget))
        rows = projects + [r for r in rows if r not in projects]
        note = (f"; equal training time with the {equal_time} anchor ({budget:.0f} s; project iterations from a "
                f"{probe_iters}-iteration probe, {probe_wall:.0f} s, not counted"
                + (", then rescaled by the first run's s/it" if again is not None else "") + ")")
    print(f"\nbench anchor: {iters} iterations, batch {batch_size}, {cfg.data.image_size} px, train "
          f"{cfg.data.train_json}, val {cfg.data.val_json}; device {dev} ({threads} threads); "
          f"wall time = build + train + one val evaluation{note}")  # fmt: skip
    table = format_table(rows, 0)
    print(table)
    (out / "anchor_bench.json").write_text(json.dumps({"rows": rows, "table": table, "device": str(dev),
                                                       "threads": threads, "equal_time": equal_time},
                                                      indent=1))  # fmt: skip
    return rows
