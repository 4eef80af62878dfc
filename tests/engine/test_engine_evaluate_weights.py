"""`evaluate` says which weights it scored, in its printout and in metrics.json."""

from __future__ import annotations

import json

from dgseg.pipeline.engine.evaluate import evaluate_checkpoint
from dgseg.pipeline.train import train


def test_evaluate_names_the_weights_it_scored(tiny_cache, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(tiny_cache, run, "train.max_iter=2", "semi.enabled=true", "semi.teacher_iters=1",
                      "semi.burn_in_iter=0", "semi.score_threshold=0.0", "train.warmup_iters=0")
    train(cfg)  # ends in stage B: the weights hold the student ("model") and the teacher
    capsys.readouterr()
    metrics = evaluate_checkpoint(cfg, run, tmp_path / "eval")  # "auto": the teacher, when there is one
    printed = capsys.readouterr().out
    # a run folder is scored by its final weights
    assert f"teacher weights of {run / 'model_final.pth'} (iteration 2)" in printed
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["weights"] == metrics["weights"] == "teacher"
    assert saved["checkpoint"] == str(run / "model_final.pth") and saved["iteration"] == 2
    evaluate_checkpoint(cfg, run / "model_0000002.pth", tmp_path / "eval2")  # a file given is the file scored
    assert f"teacher weights of {run / 'model_0000002.pth'} (iteration 2)" in capsys.readouterr().out


def test_mask_score_power_reaches_training_eval_and_evaluate(tiny_cache, tiny_config, tmp_path):
    # the same setting must score the run's own last evaluation and `evaluate` alike
    run = tmp_path / "run"
    cfg = tiny_config(tiny_cache, run, "train.max_iter=1", "train.warmup_iters=0", "train.checkpoint_period=1",
                      "eval.mask_score_power=4")
    train(cfg)
    kept = json.loads((run / "final_eval" / "coco_results.json").read_text())
    evaluate_checkpoint(cfg, run, tmp_path / "p4")
    again = json.loads((tmp_path / "p4" / "results.json").read_text())
    assert [r["score"] for r in kept] == [r["score"] for r in again]
    plain = tiny_config(tiny_cache, run, "train.max_iter=1", "train.warmup_iters=0", "train.checkpoint_period=1")
    evaluate_checkpoint(plain, run, tmp_path / "p1")
    p1 = {(r["image_id"], r["category_id"], r["segmentation"]["counts"]): r["score"]
          for r in json.loads((tmp_path / "p1" / "results.json").read_text())}
    p4 = {(r["image_id"], r["category_id"], r["segmentation"]["counts"]): r["score"] for r in again}
    shared = p1.keys() & p4.keys()
    assert shared
    # a mean mask probability m < 1 scores p * m ** 4 < p * m: every instance scores lower under power 4
    assert all(p4[k] < p1[k] for k in shared)
