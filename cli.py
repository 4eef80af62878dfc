"""Command line of the depth-guided SSIS tool: `python cli.py --help` (or `dgseg --help`).

Each command parses its arguments, loads the one `Config`, and calls a plain function of
`pipeline/` or `depth_cache/`; imports are inside the commands so `--help` stays fast.
Nothing imports this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

CONFIG_HELP = "YAML config (see configs/); later `a.b.c=value` arguments override it."


def _load(config: str | None, overrides: tuple[str, ...]):
    from pipeline.config_io import ConfigError, load_config

    try:
        return load_config(config, overrides)
    except ConfigError as err:
        raise click.ClickException(str(err)) from err


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Depth-guided semi-supervised instance segmentation (two stages: precompute depth, then train)."""


# ---------------------------------------------------------------- data (foundation)


@main.command("make-synthetic")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--num-train", default=1000, show_default=True, help="Training images.")
@click.option("--num-val", default=200, show_default=True, help="Validation images.")
@click.option("--size", default=128, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True)
def make_synthetic(out_dir: str, num_train: int, num_val: int, size: int, seed: int) -> None:
    """Generate the RGB-D dataset: colour-ambiguous, depth-separable instances, COCO JSON + 16-bit depth."""
    from pipeline.data.synthetic import generate_dataset

    summary = generate_dataset(Path(out_dir), num_train=num_train, num_val=num_val, size=size, seed=seed)
    click.echo(summary)


@main.command("make-splits")
@click.option("--ann", required=True, type=click.Path(exists=True, dir_okay=False), help="Full train COCO JSON.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--percents", default="1,2,5,10", show_default=True, help="Comma-separated label percentages.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--unlabeled-includes-labeled", is_flag=True, help="Keep the labelled images in the unlabelled list.")
def make_splits(ann: str, out_dir: str, percents: str, seeds: str, unlabeled_includes_labeled: bool) -> None:
    """Write labelled COCO JSONs and unlabelled image lists per percent and seed (deterministic)."""
    from pipeline.data.splits import make_splits as run

    try:
        written = run(
            Path(ann),
            Path(out_dir),
            percents=[float(p) for p in percents.split(",") if p],
            seeds=[int(s) for s in seeds.split(",") if s],
            unlabeled_includes_labeled=unlabeled_includes_labeled,
        )
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    for path in written:
        click.echo(path)


@main.command("convert-cityscapes")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False), help="Cityscapes root.")
@click.option("--split", default="train", show_default=True)
@click.option("--out", "out_json", required=True, type=click.Path(dir_okay=False))
def convert_cityscapes(root: str, split: str, out_json: str) -> None:
    """Convert Cityscapes gtFine instance PNGs to COCO JSON (8 instance classes)."""
    from pipeline.data.cityscapes import convert

    try:
        summary = convert(Path(root), split, Path(out_json))
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    click.echo(summary)


# ---------------------------------------------------------------- stage one (depth_cache)
# (commands: precompute-depth, cache ls/info/verify/export)


# ---------------------------------------------------------------- stage two (pipeline)
# (commands: train, evaluate, predict)


@main.command("train", context_settings={"ignore_unknown_options": False})
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help=CONFIG_HELP)
@click.option("--resume", is_flag=True, help="Continue from the run's last checkpoint (exactly).")
@click.argument("overrides", nargs=-1)
def train_cmd(config: str | None, resume: bool, overrides: tuple[str, ...]) -> None:
    """Train (supervised, or teacher-student when semi.enabled) reading depth from the cache."""
    from pipeline.engine.context import NonFiniteLoss
    from pipeline.engine.trainer import train

    cfg = _load(config, overrides)
    try:
        metrics = train(cfg, resume=resume)
    except (NonFiniteLoss, FileNotFoundError, KeyError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    if metrics:
        click.echo(f"final val mask AP: {metrics.get('AP', float('nan')):.2f}")


@main.command("evaluate")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help=CONFIG_HELP)
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--which", type=click.Choice(["auto", "model", "teacher"]), default="auto", show_default=True,
              help="Weights to evaluate; auto = the teacher when the checkpoint has one.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where metrics.json/results.json go.")
@click.argument("overrides", nargs=-1)
def evaluate_cmd(config: str | None, checkpoint: str, which: str, out_dir: str | None,
                 overrides: tuple[str, ...]) -> None:
    """COCO mask AP of a checkpoint on the val split (depth read from the cache)."""
    from pipeline.engine.checkpoint import CheckpointError
    from pipeline.engine.evaluate import evaluate_checkpoint

    cfg = _load(config, overrides)
    try:
        evaluate_checkpoint(cfg, checkpoint, out_dir, which)
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as err:
        raise click.ClickException(str(err)) from err


# ---------------------------------------------------------------- benchmarks
# (command group: bench)


if __name__ == "__main__":
    sys.exit(main())
