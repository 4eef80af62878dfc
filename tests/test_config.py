from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Config
from pipeline.config_io import ConfigError, load_config

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
