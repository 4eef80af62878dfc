from __future__ import annotations

from pathlib import Path

import pytest
from dgseg.pipeline.config import Config
from dgseg.pipeline.config.loading import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_build():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.depth.cache.levels == ["path_4"]


def test_overrides_typed(tmp_path):
    cfg = load_config(None, ["train.max_iter=7", "model.depth_fusion.enabled=false", "train.lr=3e-4"])
    assert cfg.train.max_iter == 7
    assert cfg.model.depth_fusion.enabled is False
    assert cfg.train.lr == pytest.approx(3e-4)


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_iters: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.max_iters" in str(err.value) and str(path) in str(err.value)


def test_wrong_type_names_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_iter: ten\n")
    with pytest.raises(ConfigError, match=r"train\.max_iter.*int"):
        load_config(path)
    path.write_text("model:\n  hidden_dim: true\n")
    with pytest.raises(ConfigError, match=r"model\.hidden_dim"):
        load_config(path)
    path.write_text("depth:\n  mode: sometimes\n")
    with pytest.raises(ConfigError, match=r"depth\.mode.*one of"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/cfg.yaml")


def test_bad_override():
    with pytest.raises(ConfigError, match="a.b.c=value"):
        load_config(None, ["train.max_iter"])
    with pytest.raises(ConfigError, match="train.nope"):
        load_config(None, ["train.nope=1"])


def test_base_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  max_iter: 100\n  lr: 0.001\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  max_iter: 5\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.train.max_iter == 5 and cfg.train.lr == pytest.approx(0.001)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    load_config(path)


# ---------------------------------------------------------------- field metadata: help and range


def _leaf_fields(cls: type, prefix: str = ""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaf_fields(tp, key)
        else:
            yield key, tp, f


def _is_numeric(tp) -> bool:
    import typing

    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if tp in (int, float):
        return True
    return typing.get_origin(tp) in (list, typing.Union, __import__("types").UnionType) and any(
        _is_numeric(a) for a in args)


def test_every_field_has_a_meaning_and_every_number_a_range():
    """New fields must say what they mean (`config show` prints it) and, if numeric, their valid range:
    declare them with `pipeline.config.setting(default, help=..., range=...)` (see that module)."""
    from dgseg.pipeline.config.checks import Interval

    missing_help, missing_range = [], []
    for key, tp, f in _leaf_fields(Config):
        if len(f.metadata.get("help", "").strip()) < 10:
            missing_help.append(key)
        if _is_numeric(tp):
            if "range" not in f.metadata:
                missing_range.append(key)
            else:
                Interval.parse(f.metadata["range"])  # a malformed interval raises
    assert not missing_help, f"fields without a one-line help: {missing_help}"
    assert not missing_range, f"numeric fields without a range: {missing_range}"


@pytest.mark.parametrize("override, key, range_text", [
    ("train.batch_size=0", "train.batch_size", "[1, inf)"),
    ("semi.ema_decay=-0.5", "semi.ema_decay", "[0, 1]"),
    ("train.lr=-1", "train.lr", "(0, inf)"),
    ("train.lr=0", "train.lr", "(0, inf)"),
    ("train.lr=.nan", "train.lr", "(0, inf)"),
    ("train.eval_period=-5", "train.eval_period", "[0, inf)"),
    ("semi.score_threshold=1.5", "semi.score_threshold", "[0, 1]"),
    ("semi.controller.momentum=1.0", "semi.controller.momentum", "[0, 1)"),
    ("semi.pseudo_dedup_iou=2", "semi.pseudo_dedup_iou", "[0, 1]"),
    ("train.steps=[100, -1]", r"train.steps[1]", "[1, inf)"),
    ("depth.cache.shard_size=0", "depth.cache.shard_size", "[1, inf)"),
    ("depth.estimator.input_size=-14", "depth.estimator.input_size", "[1, inf)"),
    ("data.num_workers=-1", "data.num_workers", "[0, inf)"),
])
def test_out_of_range_values_name_the_key_the_range_and_the_override(override, key, range_text):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "demo.yaml", [override])
    msg = str(err.value)
    assert f"'{key}' must be in {range_text}" in msg
    assert f"command-line override '{override}'" in msg and "demo.yaml" not in msg


def test_out_of_range_value_in_a_file_names_the_file_that_set_it(tmp_path):
    (tmp_path / "base.yaml").write_text("semi:\n  ema_decay: 1.5\ntrain:\n  lr: 0.001\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  max_iter: 5\n  batch_size: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "child.yaml")
    assert str(err.value).startswith(f"{tmp_path / 'base.yaml'}: 'semi.ema_decay' must be in [0, 1]")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nsemi:\n  ema_decay: 0.9\ntrain:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'child.yaml'}: 'train.batch_size' must be in \[1, inf\)"):
        load_config(tmp_path / "child.yaml")


def test_unknown_key_on_the_command_line_is_a_command_line_error(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("train:\n  max_iter: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.max_iters=7"])
    msg = str(err.value)
    assert "command-line override 'train.max_iters=7'" in msg and "train.max_iters" in msg
    assert str(path) not in msg
    with pytest.raises(ConfigError) as err:  # a wrong type too
        load_config(path, ["train.max_iter=ten"])
    assert "command-line override 'train.max_iter=ten'" in str(err.value) and str(path) not in str(err.value)


@pytest.mark.parametrize("overrides, match", [
    (["data.min_scale=2.0", "data.max_scale=1.5"], r"data\.min_scale=2\.0 .* above data\.max_scale=1\.5"),
    (["model.hidden_dim=100", "model.nheads=8"], r"model\.hidden_dim=100 .* multiple of model\.nheads=8"),
    (["semi.controller.init_weight=0.9", "semi.controller.max_weight=0.8"], r"min_weight <= init_weight"),
    (["depth.mode=none"], r"model\.depth_fusion\.enabled=True .*depth\.mode=none"),
    (["depth.estimator.name=depth-anything-v2-vits", "depth.estimator.input_size=500"],
     r"depth\.estimator\.input_size=500 \(command-line override .*multiple of 14"),
    # the data resample every cached level to data.feature_stride: depth_s4 at stride 8 is a stride-8 map
    (["data.feature_stride=8"], r"reads depth_s4 \(stride 4\) for res2 .*data\.feature_stride=8 \(command-line"),
])
def test_fields_that_contradict_each_other_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIGS / "demo.yaml", overrides)


# ---------------------------------------------------------------- schedule traps (warnings)


def _warnings_of(path, overrides) -> list[str]:
    import warnings

    from dgseg.pipeline.config.loading import ConfigWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_config(path, overrides)
    return [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]


def test_burn_in_not_shorter_than_stage_b_is_warned_and_the_readme_smoke_run_is_clean():
    # the README's old smoke command: 50 stage-B steps under a 100-step burn-in, the teacher never changes
    found = [m for m in _warnings_of(CONFIGS / "demo.yaml", ["semi.teacher_iters=100", "train.max_iter=150"])
             if "burn_in" in m]  # (the demo's evaluation period, beyond such a run, is warned too)
    assert len(found) == 1 and "semi.burn_in_iter=100 (" in found[0] and "50 steps" in found[0]
    assert "command-line override 'train.max_iter=150'" in found[0]
    readme = (CONFIGS.parent / "README.md").read_text()
    smoke = ("bash scripts/demo.sh semi.teacher_iters=100 train.max_iter=160 semi.burn_in_iter=20 "
             "train.eval_period=80 train.checkpoint_period=80")
    assert smoke in readme and "train.max_iter=150`" not in readme
    assert _warnings_of(CONFIGS / "demo.yaml", smoke.split()[2:]) == []
    # a stage-A-only run (results.sh trains two-view teachers this way) is not a trap
    assert _warnings_of(CONFIGS / "demo.yaml", ["semi.teacher_iters=600", "train.max_iter=600"]) == []
    # from a teacher checkpoint, stage B is the whole run
    found = _warnings_of(CONFIGS / "demo.yaml", ["semi.teacher_checkpoint=t.pth", "train.max_iter=80"])
    assert [m for m in found if "burn_in" in m][0].startswith("semi.burn_in_iter=100 (")


def test_warmup_and_periods_beyond_their_stage_are_warned():
    found = _warnings_of(None, ["train.max_iter=40", "train.warmup_iters=50", "train.eval_period=100",
                                "train.checkpoint_period=0"])
    assert any(m.startswith("train.warmup_iters=50 (command-line") and "the run (40 steps)" in m for m in found)
    assert any(m.startswith("train.eval_period=100 (") for m in found)
    assert not any("checkpoint_period" in m for m in found)  # 0 means "only at the end", on purpose
    found = _warnings_of(CONFIGS / "demo.yaml", ["semi.teacher_iters=20"])
    assert len(found) == 1 and "warmup_iters=30 (" in found[0] and "stage A (20 steps)" in found[0]
    with pytest.raises(ConfigError, match=r"semi\.teacher_iters=1200 .*longer than train\.max_iter"):
        load_config(CONFIGS / "demo.yaml", ["semi.teacher_iters=1200"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_raise_no_warning(path):
    assert _warnings_of(path, []) == []


# ---------------------------------------------------------------- cli.py config show


def _cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "cli.py", *args], cwd=CONFIGS.parent, capture_output=True, text=True,
                          timeout=120)


def test_config_show_lists_every_key_with_value_default_source_and_meaning():
    proc = _cli("config", "show", "--config", "configs/demo.yaml", "train.max_iter=1600")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for key, _, f in _leaf_fields(Config):
        section, name = key.rsplit(".", 1)
        assert f"[{section}]" in out and f" {name} = " in out, key
        assert f.metadata["help"] in out, key
    assert "* max_iter = 1600   (default 1000; from command-line override 'train.max_iter=1600')" in out
    assert "* lr = 0.001   (default 0.0001; from configs/demo.yaml)" in out
    assert "  batch_size = 8   (the default" in out  # the demo sets it to the default value
    changed = _cli("config", "show", "--config", "configs/demo.yaml", "--changed").stdout
    assert "* lr = 0.001" in changed and " hflip = " not in changed


def test_config_show_reports_range_errors_and_schedule_warnings():
    proc = _cli("config", "show", "--config", "configs/demo.yaml", "train.batch_size=0")
    assert proc.returncode != 0
    assert "command-line override 'train.batch_size=0': 'train.batch_size' must be in [1, inf)" in proc.stderr
    proc = _cli("config", "show", "--config", "configs/demo.yaml", "semi.teacher_iters=100", "train.max_iter=150")
    assert proc.returncode == 0
    assert "warning: semi.burn_in_iter=100 (configs/demo.yaml) is not shorter than stage B's 50 steps" in proc.stderr


@pytest.mark.parametrize("key", [
    "model.query_init=encoder", "model.query_groups=3", "model.mask_piloted=true", "model.pilot_label_noise=0.1",
    "model.semantic_weight=1", "model.mask_stride=2", "semi.pseudo_mask_score_power=8", "semi.student_lr_mult=0.1",
    "semi.depth_view=jet"])  # fmt: skip
def test_removed_options_are_unknown_keys(key):
    """Measured useless and removed (docs/experiments/2026-12-04-removed-options.md)."""
    with pytest.raises(ConfigError, match=key.split("=")[0].split(".")[1]):
        load_config(None, [key])


# ---------------------------------------------------------------- one merge rule: sections merge, values replace
def _child_of_a_base(tmp_path, child_text: str) -> Path:
    (tmp_path / "base.yaml").write_text(
        "model:\n  hidden_dim: 64\n  depth_fusion:\n    sources: {res2: path_4, res3: path_4, res5: path_4}\n"
        "train:\n  lr: 0.002\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\n" + child_text)
    return tmp_path / "child.yaml"


def test_a_mapping_value_in_a_child_file_replaces_the_base_value_as_an_override_does(tmp_path):
    from dgseg.pipeline.config import resolve_config

    child = _child_of_a_base(tmp_path, "model:\n  depth_fusion:\n    sources: {res2: path_4}\n")
    by_file = resolve_config(child)
    by_override = resolve_config(tmp_path / "base.yaml", ["model.depth_fusion.sources={res2: path_4}"])
    assert by_file.config.model.depth_fusion.sources == {"res2": "path_4"}
    assert by_override.config.model.depth_fusion.sources == {"res2": "path_4"}
    # the sections around the value merge: the base's other keys stay, with the base as their source
    assert by_file.config.model.hidden_dim == 64 and by_file.config.train.lr == pytest.approx(0.002)
    assert by_file.where("model.depth_fusion.sources") == str(child)
    assert by_file.where("model.hidden_dim") == str(tmp_path / "base.yaml")
    assert by_file.where("train.lr") == str(tmp_path / "base.yaml")
    assert by_file.where("model.nheads") == "default"


def test_an_override_of_a_section_merges_like_a_file_section(tmp_path):
    from dgseg.pipeline.config import resolve_config

    _child_of_a_base(tmp_path, "")
    resolved = resolve_config(tmp_path / "base.yaml", ["model={num_queries: 7}"])
    assert resolved.config.model.num_queries == 7 and resolved.config.model.hidden_dim == 64
    assert resolved.where("model.num_queries") == "command-line override 'model={num_queries: 7}'"
    assert resolved.where("model.hidden_dim") == str(tmp_path / "base.yaml")


def test_an_override_inside_a_value_is_refused_with_the_whole_form(tmp_path):
    with pytest.raises(ConfigError, match=r"'model\.depth_fusion\.sources' is one value.*sources=\{"):
        load_config(None, ["model.depth_fusion.sources.res2=path_3"])


def test_config_show_names_each_leaf_s_own_source(tmp_path):
    from dgseg.pipeline.config import format_config, resolve_config

    child = _child_of_a_base(tmp_path, "model:\n  num_queries: 9\n")
    text = format_config(resolve_config(child, ["train.max_iter=50"]))
    assert f"* hidden_dim = 64   (default 128; from {tmp_path / 'base.yaml'})" in text
    assert f"* num_queries = 9   (default 20; from {child})" in text
    assert "* max_iter = 50   (default 1000; from command-line override 'train.max_iter=50')" in text
    assert '* sources = {"res2": "path_4", "res3": "path_4", "res5": "path_4"}   (default ' in text
    assert f"from {tmp_path / 'base.yaml'})" in text.split("* sources = ")[1].splitlines()[0]


def test_docs_config_md_is_the_rendering_of_the_defaults():
    """Regenerate with `python cli.py config show --markdown > docs/config.md` when a field changes."""
    from dgseg.pipeline.config import resolve_config
    from dgseg.pipeline.config.show import format_config_markdown

    rendered = format_config_markdown(resolve_config(None))
    assert (CONFIGS.parent / "docs" / "config.md").read_text() == rendered, "docs/config.md is stale"
    for key, _, f in _leaf_fields(Config):  # every key is in it, with its meaning
        assert f"| `{key.rsplit('.', 1)[1]}` |" in rendered and f.metadata["help"].replace("|", "\\|") in rendered


def test_train_without_config_refuses_with_a_hint(tmp_path):
    proc = _cli("train", f"train.output_dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    assert "train needs --config: give --config demo" in proc.stderr and "config list" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_use_the_run_folder_config_when_no_config_is_given(tmp_path, command):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_final.pth").write_bytes(b"not a checkpoint")
    extra = ["--images", str(run / "model_final.pth"), "--out", str(tmp_path / "out")] if command == "predict" else []
    proc = _cli(command, "--checkpoint", str(run), *extra)
    assert proc.returncode != 0 and "holds no config.yaml" in proc.stderr
    (run / "config.yaml").write_text("train:\n  max_iter: 7\n")
    proc = _cli(command, "--checkpoint", str(run), *extra)
    assert f"using the run's config {run / 'config.yaml'} (no --config given)" in proc.stderr
