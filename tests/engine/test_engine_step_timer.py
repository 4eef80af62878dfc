"""Per-part step times (`train.time_parts`): logged for every part of a stage-B step, and the
losses are the same as without them (the timer only observes)."""

from __future__ import annotations

import time

import torch
from dgseg.pipeline.engine.step_timer import StepTimer
from dgseg.pipeline.train import train
from test_engine_train import log_rows, losses_by_iter

STAGE_B_PARTS = {"labelled", "teacher", "pseudo_labels", "augment", "student_forward", "unsup_loss", "matching",
                 "controller", "backward_step", "ema", "depth"}


def test_off_is_a_shared_no_op_and_on_accumulates():
    off = StepTimer(False)
    assert off("a") is off("b")
    with off("a"):
        pass
    assert off.log() == {}
    lin = torch.nn.Linear(2, 2)
    assert off.wrap(lin, "x") is lin
    on = StepTimer(True)
    for _ in range(2):
        with on("sleep"):
            time.sleep(0.01)
    wrapped = on.wrap(lin, "linear")
    assert torch.equal(wrapped(torch.ones(1, 2)), lin(torch.ones(1, 2)))
    log = on.log()
    assert log["time/sleep"] >= 0.02 and "time/linear" in log


def test_stage_b_parts_are_logged_and_change_no_loss(tiny_cache, tiny_config, tmp_path):
    over = ["train.max_iter=3", "semi.enabled=true", "semi.teacher_iters=1", "semi.burn_in_iter=1",
            "semi.score_threshold=0.0"]
    train(tiny_config(tiny_cache, tmp_path / "plain", *over))
    train(tiny_config(tiny_cache, tmp_path / "timed", *over, "train.time_parts=true"))
    assert losses_by_iter(tmp_path / "timed") == losses_by_iter(tmp_path / "plain")
    assert not any(k.startswith("time/") for r in log_rows(tmp_path / "plain") for k in r)
    last = [r for r in log_rows(tmp_path / "timed") if "time" in r][-1]
    parts = {k[5:]: v for k, v in last.items() if k.startswith("time/")}
    assert STAGE_B_PARTS <= set(parts)
    top = sum(v for k, v in parts.items() if k != "matching")  # matching runs inside the loss parts
    assert 0 < top <= last["time"] and parts["matching"] < parts["labelled"] + parts["unsup_loss"]


def test_peak_memory_per_part_credits_nested_parts(monkeypatch):
    """On CUDA each part records its peak and its rise over its start; a nested part's reset of the
    peak counter must not hide the outer part's own peak (a fake allocator stands in for CUDA here)."""
    state = {"now": 100, "peak": 100}

    def alloc(n: int) -> None:
        state["now"] += n
        state["peak"] = max(state["peak"], state["now"])

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: state.update(peak=state["now"]))
    timer = StepTimer(True)
    timer.memory = True  # as on CUDA, without the synchronisations
    with timer("outer"):
        alloc(50)  # outer peaks at 150 ...
        alloc(-50)
        with timer("inner"):
            alloc(20)  # ... inner at 120, after the outer's peak was reset away
            alloc(-20)
    log = timer.log()
    assert log["mem/outer"] == 150 and log["mem_rise/outer"] == 50
    assert log["mem/inner"] == 120 and log["mem_rise/inner"] == 20
