"""`cli.py bench anchor` end to end on the tiny generated dataset and its `files` depth cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dgseg.pipeline.config.loading import save_config

ROOT = Path(__file__).resolve().parents[2]
ITERS_OVERFIT = 150  # about 1-2 min on 2 free cores (11 min on a loaded machine)


def run_bench_cli(tiny_cache, tiny_config, tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """`cli.py bench anchor` on the tiny dataset with all its labels; returns (process, config file, --out)."""
    config, out = tmp_path / "tiny.yaml", tmp_path / "bench"
    save_config(tiny_config(tiny_cache, tmp_path / "unused"), config)
    proc = subprocess.run(
        [sys.executable, "cli.py", "bench", "anchor", "--config", str(config), "--batch-size", "2", "--out", str(out),
         *args, f"data.train_json={tiny_cache}/annotations/train.json", "eval.batch_size=3", "eval.max_detections=10"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return proc, config, out


def test_bench_anchor_cli_runs_every_mode_and_the_project(tiny_cache, tiny_config, tmp_path):
    proc, config, out = run_bench_cli(tiny_cache, tiny_config, tmp_path, "--iters", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + 4, proc.stdout  # header, project + three anchor modes
    assert lines[0].startswith("| method | iters | batch | mask AP | AP50 | class-agnostic AP |")
    assert lines[1].startswith("| project: Mask2Former resnet18, supervised + Depth Fusion | 3 | 2 |")
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == [
        "Mask R-CNN R18-FPN, RGB", "Mask R-CNN R18-FPN, depth", "Mask R-CNN R18-FPN, RGB + depth (4 ch)"]
    summary = json.loads((out / "anchor_bench.json").read_text())
    assert [r["iters"] for r in summary["rows"]] == [3, 3, 3, 3]
    assert all(r["wall_s"] > 0 and 0 <= r["AP"] <= 100 and 0 <= r["agnostic_AP"] <= 100 for r in summary["rows"])
    # the project's columns come from its trainer's last evaluation, kept; nothing predicts the val set again
    from dgseg.pipeline.evaluation import evaluate_segm, load_coco_gt

    kept = out / "project" / "final_eval"
    assert not (out / "project" / "eval").exists()
    scored = evaluate_segm(load_coco_gt(tiny_cache / "annotations" / "val.json"),
                           json.loads((kept / "coco_results.json").read_text()))
    assert scored["AP"] == pytest.approx(summary["rows"][0]["AP"])
    # the project's run is its real trainer, supervised, under the bench's folder
    project_cfg = (out / "project" / "config.yaml").read_text()
    assert "max_iter: 3" in project_cfg and f"output_dir: {out / 'project'}" in project_cfg
    assert (out / "project" / "metrics.json").is_file()
    for mode in ("rgb", "depth", "rgbd"):
        run = out / f"anchor_{mode}"
        assert (run / "metrics.json").is_file() and (run / "results.json").is_file()
        logged = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        assert logged[-1]["iter"] == 3 and logged[-1]["loss"] > 0

    again = subprocess.run([sys.executable, "cli.py", "bench", "anchor", "--config", str(config), "--out", str(out),
                            "--no-project", "--modes", "rgb"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "is not empty" in again.stderr


def test_bench_anchor_equal_time_sizes_the_project_run_from_the_anchor_and_a_probe(tiny_cache, tiny_config,
                                                                                   tmp_path):  # fmt: skip
    # tolerance 0: any miss of the anchor's time makes the project train again, rescaled by its own s/it
    proc, _, out = run_bench_cli(tiny_cache, tiny_config, tmp_path, "--iters", "4", "--modes", "rgbd",
                                 "--equal-time", "rgbd", "--probe-iters", "5", "--time-tolerance", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "anchor_bench.json").read_text())
    *projects, anchor = summary["rows"]
    assert summary["equal_time"] == "rgbd" and anchor["iters"] == 4 and anchor["mode"] == "rgbd"
    assert all(p["method"].startswith("project:") for p in projects)
    first = next(p for p in projects if p["out"] == str(out / "project"))
    # the probe's own log gives the s/it the first run's iterations were sized by
    logged = [json.loads(ln) for ln in (out / "probe" / "metrics.jsonl").read_text().splitlines()]
    times = {r["iter"]: r["time"] for r in logged if "time" in r}
    s_it = (times[5] - times[3]) / 2
    assert first["iters"] == max(1, round(anchor["train_s"] / s_it))
    assert f"max_iter: {first['iters']}" in (out / "project" / "config.yaml").read_text()
    again = max(1, round(anchor["train_s"] / (first["train_s"] / first["iters"])))
    if again == first["iters"]:  # the first run's own s/it sizes it the same: nothing to rerun
        assert len(projects) == 1 and not (out / "project_rerun").exists()
    else:
        assert len(projects) == 2 and "trains again" in proc.stdout
        rerun = next(p for p in projects if p["out"] == str(out / "project_rerun"))
        assert rerun["iters"] == again
        # the reference row (first) is the run whose training time is nearer the anchor's
        assert abs(projects[0]["train_s"] - anchor["train_s"]) <= abs(projects[1]["train_s"] - anchor["train_s"])
    assert "equal training time with the rgbd anchor" in proc.stdout


def test_rerun_iters_rescales_only_a_run_that_missed_the_budget():
    from dgseg.bench.bench_anchor import rerun_iters

    # 100 iterations took 120 s of a 100-s budget: 1.2 s/it, so 83 iterations fit
    assert rerun_iters(100.0, 100, 120.0, 0.05) == 83
    assert rerun_iters(100.0, 100, 80.0, 0.05) == 125
    assert rerun_iters(100.0, 100, 104.0, 0.05) is None  # within the tolerance
    assert rerun_iters(100.0, 100, 100.4, 0.0) is None  # rescaled to the same count: nothing to rerun


def test_equal_time_needs_its_mode_among_the_runs(tiny_cache, tiny_config, tmp_path):
    from dgseg.bench.bench_anchor import equal_time_iters, run_bench

    cfg = tiny_config(tiny_cache, tmp_path / "unused")
    with pytest.raises(ValueError, match="--equal-time depth needs that mode"):
        run_bench(cfg, iters=2, modes=("rgb",), equal_time="depth", out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="--equal-time rgb needs that mode"):
        run_bench(cfg, iters=2, modes=("rgb",), project=False, equal_time="rgb", out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="--time-tolerance must be >= 0"):
        run_bench(cfg, iters=2, modes=("rgb",), equal_time="rgb", time_tolerance=-0.1, out_dir=tmp_path / "b")
    assert equal_time_iters(100.0, 0.4) == 250 and equal_time_iters(0.1, 1.0) == 1
    with pytest.raises(ValueError, match="s per iteration"):
        equal_time_iters(10.0, float("nan"))


def test_bench_anchor_refuses_an_unknown_mode(tmp_path):
    proc = subprocess.run([sys.executable, "cli.py", "bench", "anchor", "--modes", "rgb,lidar", "--out",
                           str(tmp_path / "b")], cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0 and "'lidar'" in proc.stderr


@pytest.mark.slow
def test_rgbd_anchor_overfits_a_handful_of_scenes(tiny_config, tmp_path):
    """Learning test: Mask R-CNN with depth as a 4th channel, trained on 6 generated scenes, segments them."""
    import torch
    from dgseg.depth_cache.images import records_from_json
    from dgseg.depth_cache.precompute import run_precompute
    from dgseg.pipeline.baselines.loop import train_anchor
    from dgseg.pipeline.data.synthetic import generate_dataset

    root = tmp_path / "scenes"
    generate_dataset(root, num_train=6, num_val=0, size=64, seed=5)
    cfg = tiny_config(root, tmp_path / "unused", f"data.train_json={root}/annotations/train.json",
                      f"data.val_json={root}/annotations/train.json", f"data.val_image_dir={root}/images/train",
                      "train.warmup_iters=10", "train.log_period=10", "eval.batch_size=6")  # fmt: skip
    run_precompute(records_from_json(root / "annotations/train.json", root / "images/train"), cfg.depth.estimator,
                   cfg.depth.cache, progress=False)  # fmt: skip
    from dgseg.depth_cache.reader import open_cache

    reader = open_cache(cfg.depth.cache.root, cfg.depth.estimator, cfg.depth.cache)
    run = train_anchor(cfg, "rgbd", reader, ITERS_OVERFIT, 3, torch.device("cpu"), tmp_path / "anchor")
    # measured with these settings: AP 40.6, AP50 85.5
    assert run.metrics["AP"] >= 25.0 and run.metrics["AP50"] >= 60.0
