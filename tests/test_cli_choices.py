"""The CLI's choices are the project's real ones (click.Choice), alike across commands."""

from __future__ import annotations

import click
import click.testing
from dgseg import cli
from dgseg.pipeline.data.synthetic import LAYOUTS, PRESETS


def _choices(command: click.Command, option: str) -> list[str]:
    param = next(p for p in command.params if p.name == option)
    assert isinstance(param.type, click.Choice), option
    return list(param.type.choices)


def test_make_synthetic_preset_is_a_choice_of_the_real_presets():
    assert sorted(_choices(cli.main.commands["make-synthetic"], "preset")) == sorted(PRESETS)
    out = click.testing.CliRunner().invoke(cli.main, ["make-synthetic", "--out", "x", "--preset", "smal"])
    assert out.exit_code != 0 and "'smal' is not one of" in out.output


def test_make_synthetic_layout_is_a_choice_of_the_real_layouts():
    assert list(_choices(cli.main.commands["make-synthetic"], "layout")) == list(LAYOUTS)
    assert {spec.layout for spec in PRESETS.values()} == set(LAYOUTS)  # clutter brings the third, tabletop


def test_predict_offers_the_weights_evaluate_offers():
    evaluate = set(_choices(cli.main.commands["evaluate"], "which")) - {"both"}  # both: two scores, one picture
    assert evaluate == set(_choices(cli.main.commands["predict"], "which"))
