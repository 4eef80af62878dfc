"""The installed shape: one package `dgseg` whose subpackages are the repository's folders, the shipped
configs reachable by name, the public API at the top, a version."""

from __future__ import annotations

from pathlib import Path

import dgseg
import pytest
import tomllib
from click.testing import CliRunner
from dgseg import cli
from dgseg.pipeline.config import ConfigError, config_path, load_config, shipped_configs

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_folder():
    """A subpackage missing from the explicit list would be absent from a non-editable install."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"dgseg"} | {"dgseg." + ".".join(p.parent.relative_to(ROOT).parts)
                         for top in ("pipeline", "depth_cache", "bench") for p in (ROOT / top).rglob("__init__.py")}
    assert listed == found


def test_a_shipped_config_resolves_by_name_and_loads():
    names = shipped_configs()
    assert {"demo", "coco_5pct", "cityscapes_10pct"} <= set(names)
    path = config_path("coco_5pct")
    assert path == ROOT / "configs" / "coco_5pct.yaml" and config_path("coco_5pct.yaml") == path
    assert load_config("coco_5pct").data.train_json.endswith("5pct_seed0_labeled.json")


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    (tmp_path / "demo.yaml").write_text("train:\n  max_iter: 7\n")
    monkeypatch.chdir(tmp_path)
    assert config_path("demo.yaml") == Path("demo.yaml") and load_config("demo.yaml").train.max_iter == 7


def test_an_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"no_such_config.*coco_5pct"):
        config_path("no_such_config")
    with pytest.raises(ConfigError, match="config file not found: sub/x.yaml"):
        load_config("sub/x.yaml")  # a path with a folder is never looked up among the shipped ones


def test_the_api_is_at_the_top():
    from dgseg.pipeline.engine.evaluate import evaluate_checkpoint
    from dgseg.pipeline.engine.predictor import Predictor
    from dgseg.pipeline.precompute import precompute
    from dgseg.pipeline.train import train

    assert (dgseg.load_config, dgseg.Predictor, dgseg.precompute, dgseg.train, dgseg.evaluate) == (
        load_config, Predictor, precompute, train, evaluate_checkpoint)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dgseg.nope  # noqa: B018


def test_version_and_config_list():
    out = CliRunner().invoke(cli.main, ["--version"])
    assert out.exit_code == 0 and dgseg.__version__ in out.output and dgseg.__version__ != "0+unknown"
    out = CliRunner().invoke(cli.main, ["config", "list"])
    assert out.exit_code == 0 and "coco_5pct" in out.output
    out = CliRunner().invoke(cli.main, ["config", "show", "--config", "coco_5pct"])
    assert out.exit_code == 0, out.output


@pytest.mark.slow
def test_a_non_editable_install_works_from_another_folder(tmp_path):
    """`pip install .` (a copy, not a link to this checkout): the API imports and a shipped config shows."""
    import subprocess
    import sys

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py, exe = venv / "bin" / "python", venv / "bin" / "dgseg"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
                   check=True, cwd=tmp_path)  # fmt: skip
    where = subprocess.run([str(py), "-c", "import dgseg; print(dgseg.__file__); print(dgseg.load_config)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert where.startswith(str(venv)), where  # the installed copy, not this checkout
    shown = subprocess.run([str(exe), "config", "show", "--config", "coco_5pct"], cwd=tmp_path,
                           capture_output=True, text=True)  # fmt: skip
    assert shown.returncode == 0 and "dgseg/configs/coco_base.yaml" in shown.stdout, shown.stderr
    site = next((venv / "lib").glob("python*/site-packages"))
    assert not {"cli.py", "bench", "pipeline", "depth_cache"} & {p.name for p in site.iterdir()}
