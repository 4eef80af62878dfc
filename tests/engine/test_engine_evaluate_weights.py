"""`evaluate` says which weights it scored, in its printout and in metrics.json."""

from __future__ import annotations

import json

from pipeline.engine.evaluate import evaluate_checkpoint
from pipeline.train import train


def test_evaluate_names_the_weights_it_scored(tiny_cache, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(tiny_cache, run, "train.max_iter=2", "semi.enabled=true", "semi.teacher_iters=1",
                      "semi.burn_in_iter=0", "semi.score_threshold=0.0", "train.warmup_iters=0")
    train(cfg)  # ends in stage B: the checkpoint holds the student ("model") and the teacher
    capsys.readouterr()
    metrics = evaluate_checkpoint(cfg, run, tmp_path / "eval")  # "auto": the teacher, when there is one
    printed = capsys.readouterr().out
    assert f"teacher weights of {run / 'model_0000002.pth'} (iteration 2)" in printed
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["weights"] == metrics["weights"] == "teacher"
    assert saved["checkpoint"] == str(run / "model_0000002.pth") and saved["iteration"] == 2
