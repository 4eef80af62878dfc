"""`train` into a folder that holds a run: refused without --resume/--overwrite; --overwrite starts afresh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dgseg.pipeline.engine.checkpoint import LAST
from dgseg.pipeline.engine.run_dir import RunDirError, prepare_run_dir

REPO = Path(__file__).resolve().parents[2]


def _old_run(run: Path) -> None:
    run.mkdir(parents=True)
    (run / "model_0000009.pth").write_bytes(b"old")
    (run / LAST).write_text("model_0000009.pth")
    (run / "metrics.jsonl").write_text(json.dumps({"iter": 9, "loss": 1.0}) + "\n")
    (run / "eval_model_0000009").mkdir()
    (run / "eval_model_0000009" / "metrics.json").write_text("{}")
    for kept in ("final_eval", "final_eval_student"):  # the trainer's last evaluation
        (run / kept).mkdir()
        (run / kept / "coco_results.json").write_text("[]")
    for name in ("model_final.pth", "model_final.safetensors", "log.txt", "events.out.tfevents.1.host.2.0"):
        (run / name).write_bytes(b"old")  # the finished run's weights, its log and its TensorBoard events
    (run / "notes.txt").write_text("mine")


def test_refuses_a_folder_with_a_run_and_names_the_ways_out(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, resume=False, overwrite=False)  # a new folder is fine
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")  # a run killed before its first checkpoint counts too
    with pytest.raises(RunDirError, match=rf"{run} already holds a run \(metrics.jsonl\).*--resume.*--overwrite"):
        prepare_run_dir(run, resume=False, overwrite=False)
    prepare_run_dir(run, resume=True, overwrite=False)  # continuing is what --resume means
    with pytest.raises(RunDirError, match="exclude each other"):
        prepare_run_dir(run, resume=True, overwrite=True)


def test_overwrite_deletes_only_the_runs_files(tmp_path):
    run = tmp_path / "run"
    _old_run(run)
    prepare_run_dir(run, resume=False, overwrite=True, is_main=False)  # other ranks leave it to rank 0
    assert (run / "metrics.jsonl").is_file()
    prepare_run_dir(run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def _train_cli(config: Path, *flags: str):
    return subprocess.run([sys.executable, "cli.py", "train", "--config", str(config), *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_train_command_refuses_a_folder_with_a_run(tmp_path):
    run = tmp_path / "run"
    _old_run(run)
    config = tmp_path / "cfg.yaml"
    config.write_text(f"train:\n  output_dir: {run}\n")
    proc = _train_cli(config)
    assert proc.returncode != 0
    assert f"{run} already holds a run" in proc.stderr and "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert (run / "model_0000009.pth").read_bytes() == b"old"  # nothing lost
    proc = _train_cli(config, "--resume", "--overwrite")
    assert proc.returncode != 0 and "exclude each other" in proc.stderr


def test_overwrite_then_train_starts_afresh(tiny_cache, tiny_config, tmp_path):
    from dgseg.pipeline.train import train

    run = tmp_path / "run"
    _old_run(run)
    prepare_run_dir(run, resume=False, overwrite=True)  # what `train --overwrite` does before training
    train(tiny_config(tiny_cache, run, "train.max_iter=2", "train.checkpoint_period=0"))
    rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if "loss" in r] == [1, 2]  # one row per iteration, none of the old run
    assert sorted(p.name for p in run.glob("model_*.pth")) == ["model_0000002.pth", "model_final.pth"]
    assert (run / LAST).read_text() == "model_0000002.pth" and (run / "notes.txt").read_text() == "mine"
