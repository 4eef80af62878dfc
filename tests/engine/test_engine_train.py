"""The training loops end to end on a tiny generated set: exact resume, guards, no depth inference."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from dgseg.pipeline.engine.checkpoint import LAST, load_checkpoint
from dgseg.pipeline.engine.context import NonFiniteLoss
from dgseg.pipeline.train import train


def log_rows(run_dir) -> list[dict]:
    return [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]


def losses_by_iter(run_dir) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in log_rows(run_dir) if "loss" in r}


def rewind(run_dir, iteration: int) -> None:
    """Make the run look as if it had been killed right after saving `iteration`."""
    for p in run_dir.glob("model_final.*"):  # a killed run never wrote its final weights
        p.unlink()
    for p in run_dir.glob("model_*.pth"):
        if int(p.stem.split("_")[1]) > iteration:
            p.unlink()
    (run_dir / LAST).write_text(f"model_{iteration:07d}.pth")


@pytest.mark.parametrize("semi", [False, True], ids=["supervised", "teacher-student"])
def test_resume_gives_the_same_losses(tiny_cache, tiny_config, tmp_path, semi):
    over = ["train.max_iter=6"]
    if semi:
        # stage A = 2 steps, stage B = 4 steps with the EMA starting after 1: resume lands in stage B
        over += ["semi.enabled=true", "semi.teacher_iters=2", "semi.burn_in_iter=1", "semi.score_threshold=0.0",
                 "semi.ema_decay=0.5"]
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    train(tiny_config(tiny_cache, full_dir, *over))
    full = losses_by_iter(full_dir)
    assert sorted(full) == [1, 2, 3, 4, 5, 6]
    rows = [r for r in log_rows(full_dir) if "time" in r]
    # the loader's wait is part of the step time and grows with it
    assert all(0 < r["data_time"] < r["time"] for r in rows)
    assert [r["data_time"] for r in rows] == sorted(r["data_time"] for r in rows)
    shutil.copytree(full_dir, resumed_dir)
    rewind(resumed_dir, 4)
    train(tiny_config(tiny_cache, resumed_dir, *over), resume=True)
    resumed = losses_by_iter(resumed_dir)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # the log reads as one run
    for it in (5, 6):
        assert resumed[it] == pytest.approx(full[it], rel=1e-5, abs=1e-6), it
    a, b = load_checkpoint(full_dir / "model_0000006.pth"), load_checkpoint(resumed_dir / "model_0000006.pth")
    keys = ["model", "teacher"] if semi else ["model"]
    for key in keys:
        for name, t in a[key].items():
            assert torch.allclose(t.float(), b[key][name].float(), atol=1e-5), (key, name)
    if semi:
        assert a["controller"] == pytest.approx(b["controller"])


def test_cache_mode_never_builds_an_estimator(tiny_cache, tiny_config, tmp_path, monkeypatch):
    import dgseg.depth_cache.estimators as registry
    from dgseg.depth_cache.estimators import base, files

    def refuse(*args, **kwargs):
        raise AssertionError("a depth estimator was built during training in cache mode")

    monkeypatch.setattr(registry, "build_source", refuse)
    monkeypatch.setattr(base.DepthEstimator, "__init__", refuse)
    monkeypatch.setattr(files.FilesDepth, "__init__", refuse)
    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.max_iter=2", "semi.enabled=true",
                      "semi.teacher_iters=1", "semi.burn_in_iter=1", "semi.score_threshold=0.0")
    train(cfg)
    assert (tmp_path / "run" / "model_0000002.pth").is_file()


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_cache, tiny_config, tmp_path, monkeypatch):
    from dgseg.pipeline.model.criterion import SetCriterion

    calls = {"n": 0}
    original = SetCriterion.forward

    def poisoned(self, outputs, targets):
        calls["n"] += 1
        losses = original(self, outputs, targets)
        if calls["n"] == 3:  # the third step (iteration index 2)
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    monkeypatch.setattr(SetCriterion, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=r"iteration 2.*model_0000002\.pth"):
        train(tiny_config(tiny_cache, run, "train.max_iter=5"))
    assert (run / LAST).read_text() == "model_0000002.pth"
    assert not list(run.glob("model_000000[3-5].pth"))


def test_refuses_a_cache_made_by_other_settings(tiny_cache, tiny_config, tmp_path):
    from dgseg.depth_cache.reader import CacheKeyMismatchError

    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.max_iter=1", "depth.cache.dtype=int8")
    with pytest.raises(CacheKeyMismatchError, match="dtype"):
        train(cfg)


def test_teacher_checkpoint_of_another_architecture_is_refused(tiny_cache, tiny_config, tmp_path):
    from dgseg.pipeline.engine.checkpoint import CheckpointError

    teacher_run = tmp_path / "teacher"
    train(tiny_config(tiny_cache, teacher_run, "train.max_iter=1", "model.num_queries=4"))
    cfg = tiny_config(tiny_cache, tmp_path / "student", "train.max_iter=1", "semi.enabled=true",
                      f"semi.teacher_checkpoint={teacher_run}/model_0000001.pth")
    with pytest.raises(CheckpointError, match=r"model_0000001\.pth.*(shape mismatch|missing).*query"):
        train(cfg)


def _torchrun_train(config_path, out, resume=False) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "tests/engine/ddp_train_worker.py", str(config_path), str(out)] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_share_the_controller_weight_and_resume_exactly(tiny_cache, tiny_config, tmp_path):
    """A 2-process gloo run (torchrun, CPU): the Depth Controller's w is the same on both ranks at every
    step (its statistics are summed over processes), and a run killed after iteration 4 and resumed
    ends with the weights of the uninterrupted run (each process resumes its own RNG stream)."""
    from dgseg.pipeline.config.loading import save_config

    over = ["train.max_iter=6", "semi.enabled=true", "semi.teacher_iters=2", "semi.burn_in_iter=1",
            "semi.score_threshold=0.0", "semi.ema_decay=0.5"]
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    for d in (full_dir, resumed_dir):
        save_config(tiny_config(tiny_cache, d, *over), tmp_path / f"{d.name}.yaml")
    _torchrun_train(tmp_path / "full.yaml", tmp_path / "full_w")
    w0, w1 = (json.loads((tmp_path / f"full_w.rank{r}.json").read_text()) for r in (0, 1))
    assert len(w0) == 4 and w0 == w1  # 4 stage-B steps, identical weights on both ranks

    shutil.copytree(full_dir, resumed_dir)
    rewind(resumed_dir, 4)
    _torchrun_train(tmp_path / "resumed.yaml", tmp_path / "resumed_w", resume=True)
    r0, r1 = (json.loads((tmp_path / f"resumed_w.rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 == w0[-2:]  # steps 5 and 6 give the same w as the uninterrupted run
    full, resumed = losses_by_iter(full_dir), losses_by_iter(resumed_dir)
    for it in (5, 6):
        assert resumed[it] == pytest.approx(full[it], rel=1e-5, abs=1e-6), it
    a, b = load_checkpoint(full_dir / "model_0000006.pth"), load_checkpoint(resumed_dir / "model_0000006.pth")
    assert len(a["rng_per_rank"]) == 2
    assert not torch.equal(a["rng_per_rank"][0]["torch"], a["rng_per_rank"][1]["torch"])  # ranks draw apart
    for key in ("model", "teacher"):
        for name, t in a[key].items():
            assert torch.allclose(t.float(), b[key][name].float(), atol=1e-6), (key, name)
    assert a["controller"] == pytest.approx(b["controller"])


def test_evaluate_records_which_weights_teacher_student_or_both(tiny_cache, tiny_config, tmp_path):
    from dgseg.pipeline.engine.evaluate import evaluate_checkpoint

    run = tmp_path / "run"
    cfg = tiny_config(tiny_cache, run, "train.max_iter=2", "semi.enabled=true", "semi.teacher_iters=1",
                      "semi.burn_in_iter=5", "semi.score_threshold=0.0")
    train(cfg)
    both = evaluate_checkpoint(cfg, run, tmp_path / "both", which="both")
    saved = json.loads((tmp_path / "both/metrics.json").read_text())
    assert saved["weights"] == "teacher" and saved["student"]["weights"] == "student"
    assert saved["AP"] == both["AP"] and "AP" in saved["student"]
    assert (tmp_path / "both/results_student.json").is_file() and (tmp_path / "both/results.json").is_file()
    student = evaluate_checkpoint(cfg, run, tmp_path / "student", which="student")
    assert student["weights"] == "student" and student["AP"] == saved["student"]["AP"]
    assert evaluate_checkpoint(cfg, run, tmp_path / "auto")["weights"] == "teacher"
