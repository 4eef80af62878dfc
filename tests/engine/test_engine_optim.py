"""The optimiser's parameter groups and each training stage's learning-rate schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
from dgseg.pipeline.config import ModelConfig, TrainConfig
from dgseg.pipeline.config.loading import load_config
from dgseg.pipeline.engine.optim import lr_factor, milestones, param_groups, stage_schedule
from dgseg.pipeline.semi.trainer import stage_schedules
from torch import nn

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def run_schedules(cfg) -> dict[str, TrainConfig]:
    """What the trainers build: one schedule per stage (teacher-student), or the whole run."""
    if cfg.semi.enabled:
        return stage_schedules(cfg)
    return {"run": stage_schedule(cfg.train, 0, cfg.train.max_iter)}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_decays_the_lr_in_every_stage(path):
    cfg = load_config(path)
    schedules = run_schedules(cfg)
    if cfg.semi.enabled and not cfg.semi.teacher_checkpoint:
        assert set(schedules) == {"A", "B"}
        assert schedules["A"].max_iter + schedules["B"].max_iter == cfg.train.max_iter
    for stage, sched in schedules.items():
        last = lr_factor(sched.max_iter - 1, sched)
        if sched.schedule == "step":
            # every milestone lies inside the stage, so its last step runs at gamma^k
            k = len(milestones(sched))
            assert k >= 1 and all(0 < m < sched.max_iter for m in milestones(sched)), (stage, milestones(sched))
            assert last == pytest.approx(sched.gamma**k), (path.name, stage)
        else:
            assert last < 0.05, (path.name, stage, last)
        assert lr_factor(sched.warmup_iters, sched) > 10 * last, (path.name, stage)  # it did decay


def test_paper_configs_decay_at_mask2formers_fractions_of_each_stage():
    cfg = load_config(CONFIGS / "coco_10pct.yaml")
    s = stage_schedules(cfg)
    assert milestones(s["A"]) == [round(0.889 * 90000), round(0.963 * 90000)]
    assert milestones(s["B"]) == [round(0.889 * 278750), round(0.963 * 278750)]


def test_absolute_steps_are_translated_into_each_stage():
    cfg = load_config(None, ["semi.enabled=true", "semi.teacher_iters=100", "train.max_iter=300",
                             "train.schedule=step", "train.steps=[80, 250]", "train.warmup_iters=0"])
    s = stage_schedules(cfg)
    assert milestones(s["A"]) == [80] and milestones(s["B"]) == [150]
    assert [lr_factor(i, s["B"]) for i in (149, 150, 199)] == pytest.approx([1.0, 0.1, 0.1])


def test_steps_and_fractions_together_are_refused():
    """Refused at load time, in the one place of cross-field checks (pipeline/config/checks.py)."""
    with pytest.raises(ValueError, match="not both"):
        load_config(None, ["train.schedule=step", "train.steps=[5]", "train.step_fractions=[0.5]"])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        load_config(None, ["train.schedule=step", "train.step_fractions=[1.5]"])


def test_the_logged_lr_follows_each_stage_of_a_run(tiny_cache, tiny_config, tmp_path):
    """Stage A = iterations 1-3, stage B = 4-6 (fresh schedule); milestones at fraction 0.5 (step 2
    of 3) and at absolute iteration 4 (stage B's step 1). Old code: unknown key / no decay in B."""
    import json

    from dgseg.pipeline.train import train

    common = ["train.max_iter=6", "semi.enabled=true", "semi.teacher_iters=3", "semi.burn_in_iter=1",
              "semi.score_threshold=0.0", "train.warmup_iters=0", "train.schedule=step", "train.checkpoint_period=0"]
    cases = {"train.step_fractions=[0.5]": [1, 1, 0.1, 1, 1, 0.1], "train.steps=[4]": [1, 1, 1, 1, 0.1, 0.1]}
    for i, (over, expected) in enumerate(cases.items()):
        out = tmp_path / f"run{i}"
        train(tiny_config(tiny_cache, out, *common, *over.split()))
        rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
        lrs = [r["lr"] / 1e-4 for r in rows if "lr" in r]
        assert lrs == pytest.approx(expected), over


def test_the_student_optimiser_starts_at_its_own_peak_rate():
    from dgseg.pipeline.engine.optim import build_optimizer

    cfg = load_config(None, ["semi.enabled=true", "semi.teacher_iters=100", "train.max_iter=300", "train.lr=0.002",
                             "train.backbone_lr_mult=0.5"])
    model = _model_with_every_kind_of_parameter()
    s = stage_schedules(cfg)
    assert s["A"].lr == pytest.approx(0.002) and s["B"].lr == pytest.approx(0.002)
    rates = sorted({round(g["lr"], 12) for g in build_optimizer(model, s["B"]).param_groups})
    assert rates == pytest.approx([0.001, 0.002])  # backbone and heads


def _model_with_every_kind_of_parameter() -> nn.Module:
    from dgseg.pipeline.model.build import build_model

    cfg = ModelConfig(hidden_dim=32, mask_dim=32, num_queries=4, nheads=2, dim_feedforward=64, dec_layers=2,
                      enc_layers=1, backbone_norm="batch")
    cfg.depth_fusion.enabled = False
    return build_model(cfg, num_classes=3, depth_channels={})


def test_weight_decay_groups_follow_mask2former():
    model = _model_with_every_kind_of_parameter()
    cfg = TrainConfig(lr=1e-4, weight_decay=0.05, backbone_lr_mult=0.1)
    groups = param_groups(model, cfg)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(by_param) == sum(1 for p in model.parameters() if p.requires_grad)  # each parameter once
    modules = dict(model.named_modules())
    seen_kinds = set()
    for name, p in model.named_parameters():
        module = modules[name.rpartition(".")[0]]
        lr, wd = by_param[id(p)]
        assert lr == pytest.approx(1e-5 if name.startswith("backbone.") else 1e-4), name
        if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
            assert wd == 0.0, name
            seen_kinds.add("norm")
        elif isinstance(module, nn.Embedding):
            assert wd == 0.0, name  # the queries and level embeddings (WEIGHT_DECAY_EMBED)
            seen_kinds.add("embedding")
        else:
            assert wd == 0.05, name  # conv / linear weights and their biases, as in Mask2Former
            seen_kinds.add("bias" if name.endswith("bias") else "weight")
    assert seen_kinds == {"norm", "embedding", "bias", "weight"}
    assert by_param[id(model.transformer_decoder.query_embed.weight)][1] == 0.0


def test_frozen_backbone_norms_are_left_out_of_the_optimiser():
    from dgseg.pipeline.model.build import build_model

    cfg = ModelConfig(hidden_dim=32, mask_dim=32, num_queries=4, nheads=2, dim_feedforward=64, dec_layers=2,
                      enc_layers=1, backbone_norm="frozen")
    cfg.depth_fusion.enabled = False
    model = build_model(cfg, num_classes=3, depth_channels={})
    in_groups = {id(p) for g in param_groups(model, TrainConfig()) for p in g["params"]}
    backbone = [p for p in model.backbone.parameters()]
    assert backbone and all(id(p) in in_groups for p in backbone)  # convs still train
    names = [n for n, _ in model.backbone.named_parameters()]
    assert not any(".bn" in n or "bn1" in n for n in names), names[:5]


def test_a_stage_without_a_milestone_is_warned_about_at_load_time():
    import warnings

    with pytest.warns(UserWarning, match="falls inside stage A"):
        load_config(None, ["semi.enabled=true", "semi.teacher_iters=100", "train.max_iter=300",
                           "train.schedule=step", "train.steps=[250]"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in sorted(CONFIGS.glob("*.yaml")):
            load_config(path)  # no shipped config has a stage whose LR never decays
    with pytest.raises(Exception, match="not both"):
        load_config(None, ["train.schedule=step", "train.steps=[5]", "train.step_fractions=[0.5]"])


def test_a_stage_a_only_run_trains_the_teacher_that_a_later_stage_b_starts_from(tiny_cache, tiny_config, tmp_path):
    """scripts/results.sh trains two-view teachers with semi.teacher_iters == train.max_iter, then starts
    stage B from their checkpoint. Old code: 'stage B would start at iteration 3 but train.max_iter is 3'."""
    import json

    from dgseg.pipeline.train import train

    cfg = load_config(None, ["semi.enabled=true", "semi.teacher_iters=300", "train.max_iter=300"])
    assert set(stage_schedules(cfg)) == {"A"} and stage_schedules(cfg)["A"].max_iter == 300
    with pytest.raises(ValueError, match=r"semi\.teacher_iters=300 .* longer than train\.max_iter=200"):
        load_config(None, ["semi.enabled=true", "semi.teacher_iters=300", "train.max_iter=200"])
    common = ["semi.enabled=true", "semi.burn_in_iter=1", "semi.score_threshold=0.0", "train.warmup_iters=0"]
    a = tmp_path / "A"
    train(tiny_config(tiny_cache, a, *common, "semi.teacher_iters=3", "train.max_iter=3", "train.checkpoint_period=3"))
    rows = [json.loads(s) for s in (a / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows if "stage" in r] and all(r["stage"] == "A" for r in rows if "stage" in r)
    b = tmp_path / "B"
    train(tiny_config(tiny_cache, b, *common, f"semi.teacher_checkpoint={a / 'model_0000003.pth'}",
                      "train.max_iter=2", "train.checkpoint_period=2"))
    rows = [json.loads(s) for s in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows if "stage" in r][-1] == "B"
    # the last evaluation keeps its predictions: the teacher's (reported) and the student's
    assert (a / "final_eval" / "coco_results.json").is_file()
    assert (b / "final_eval" / "coco_results.json").is_file()
    assert (b / "final_eval_student" / "coco_results.json").is_file()
