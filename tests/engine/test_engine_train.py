"""The training loops end to end on a tiny generated set: exact resume, guards, no depth inference."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pipeline.engine.checkpoint import LAST, load_checkpoint
from pipeline.engine.context import NonFiniteLoss
from pipeline.engine.trainer import train


def log_rows(run_dir) -> list[dict]:
    return [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]


def losses_by_iter(run_dir) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in log_rows(run_dir) if "loss" in r}


def rewind(run_dir, iteration: int) -> None:
    """Make the run look as if it had been killed right after saving `iteration`."""
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
    import depth_cache.estimators as registry
    from depth_cache.estimators import base, files

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
    from pipeline.model.criterion import SetCriterion

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
    from depth_cache.reader import CacheKeyMismatchError

    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.max_iter=1", "depth.cache.dtype=int8")
    with pytest.raises(CacheKeyMismatchError, match="dtype"):
        train(cfg)


def test_teacher_checkpoint_of_another_architecture_is_refused(tiny_cache, tiny_config, tmp_path):
    from pipeline.engine.checkpoint import CheckpointError

    teacher_run = tmp_path / "teacher"
    train(tiny_config(tiny_cache, teacher_run, "train.max_iter=1", "model.num_queries=4"))
    cfg = tiny_config(tiny_cache, tmp_path / "student", "train.max_iter=1", "semi.enabled=true",
                      f"semi.teacher_checkpoint={teacher_run}/model_0000001.pth")
    with pytest.raises(CheckpointError, match=r"model_0000001\.pth.*(shape mismatch|missing).*query"):
        train(cfg)
