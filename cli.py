"""Command line of the depth-guided SSIS tool: `python cli.py --help` (or `dgseg --help`).

Each command parses its arguments, loads the one `Config`, and calls a plain function of
`pipeline/` or `depth_cache/`; imports are inside the commands so `--help` stays fast.
Nothing imports this file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

CONFIG_HELP = ("YAML config file, or the name of a shipped config (demo, coco_5pct, ...; `dgseg config list`); "
               "later `a.b.c=value` arguments override it.")
CONFIG_OPTION = click.option("--config", metavar="FILE|NAME", help=CONFIG_HELP)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input (files, caches, checkpoints, configs): shown without a traceback."""
    from dgseg.depth_cache.store import CacheError
    from dgseg.pipeline.engine.checkpoint import CheckpointError
    from dgseg.pipeline.engine.context import NonFiniteLoss

    return (CacheError, CheckpointError, NonFiniteLoss, FileNotFoundError, KeyError, ValueError)


def _message(err: BaseException) -> str:
    # KeyError's str() wraps the message in quotes
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def _resolve(config: str | None, overrides: tuple[str, ...]):
    """The config with the source of every key; its warnings (schedule traps) are printed to stderr."""
    from dgseg.pipeline.config.loading import ConfigError, resolve_config

    try:
        resolved = resolve_config(config, overrides)
    except ConfigError as err:
        raise click.ClickException(str(err)) from err
    for message in resolved.warnings:
        click.echo(f"warning: {message}", err=True)
    return resolved


def _load(config: str | None, overrides: tuple[str, ...]):
    return _resolve(config, overrides).config


TRAIN_NEEDS_CONFIG = ("train needs --config: give --config demo (a shipped config), or a YAML file; "
                      "`dgseg config list` names the shipped ones")


def _run_config(config: str | None, checkpoint: str) -> str:
    """`--config` as given, else the `config.yaml` that training saved in the checkpoint's run folder
    (said on stderr, so the user knows which config was used)."""
    if config is not None:
        return config
    run = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    saved = run / "config.yaml"
    if not saved.is_file():
        raise click.ClickException(f"no --config given and {run} holds no config.yaml (the one training saves "
                                   "there): give --config NAME or a YAML file")
    click.echo(f"using the run's config {saved} (no --config given)", err=True)
    return str(saved)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dgseg", prog_name="dgseg")
def main() -> None:
    """Depth-guided semi-supervised instance segmentation (two stages: precompute depth, then train)."""


# ---------------------------------------------------------------- data (foundation)


@main.command("make-synthetic")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--num-train", default=1000, show_default=True, help="Training images.")
@click.option("--num-val", default=200, show_default=True, help="Validation images.")
@click.option("--size", default=128, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True)
@click.option("--preset", type=click.Choice(["default", "small", "clutter"]), default="default", show_default=True,
              help="Scene distribution: 'default' (large floating objects), 'small' (small objects on a ground "
                   "plane, distractors, 4 classes) or 'clutter' (6-14 overlapping objects of varied size lying on "
                   "a table, 5 classes); the options below override it.")
@click.option("--layout", type=click.Choice(["floating", "ground", "tabletop"]), help="Objects on own depth planes, "
              "standing on a ground plane (depth continuous at the contact line), or lying on a table seen from "
              "above (a few cm nearer than what they lie on).")
@click.option("--objects", help="Objects per scene, LO-HI (e.g. 2-7).")
@click.option("--object-size", help="Object half-extent as a fraction of the image side, LO-HI (e.g. 0.035-0.2).")
@click.option("--classes", help="Comma-separated shapes: ellipse, rectangle, triangle, cross, diamond, ring, star, "
              "pentagon.")
@click.option("--distractors", help="Shapes painted flat on the background per scene (no depth, no label), LO-HI.")
@click.option("--min-area", type=int, help="Visible pixels an object needs to be kept.")
def make_synthetic(out_dir: str, num_train: int, num_val: int, size: int, seed: int, preset: str, layout, objects,
                   object_size, classes, distractors, min_area) -> None:
    """Generate an RGB-D dataset: colour-ambiguous, depth-separable instances, COCO JSON + 16-bit depth."""
    from dgseg.pipeline.data.synthetic import generate_dataset, parse_range, scene_spec

    spec = scene_spec(
        preset,
        layout=layout,
        objects=parse_range(objects, int, "objects") if objects else None,
        object_size=parse_range(object_size, float, "object-size") if object_size else None,
        classes=tuple(c.strip() for c in classes.split(",")) if classes else None,
        distractors=parse_range(distractors, int, "distractors") if distractors else None,
        min_area=min_area,
    )
    summary = generate_dataset(Path(out_dir), num_train=num_train, num_val=num_val, size=size, seed=seed, spec=spec)
    click.echo(summary)


@main.command("make-splits")
@click.option("--ann", required=True, type=click.Path(exists=True, dir_okay=False), help="Full train COCO JSON.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--percents", default="1,2,5,10", show_default=True, help="Comma-separated label percentages.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--unlabeled-includes-labeled", is_flag=True, help="Keep the labelled images in the unlabelled list.")
def make_splits(ann: str, out_dir: str, percents: str, seeds: str, unlabeled_includes_labeled: bool) -> None:
    """Write labelled COCO JSONs and unlabelled image lists per percent and seed (deterministic)."""
    from dgseg.pipeline.data.splits import make_splits as run

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


@main.command("remap-ids")
@click.argument("jsons", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the new JSONs (same names) and id_map.json.")
def remap_ids_cmd(jsons: tuple[str, ...], out_dir: str) -> None:
    """Make image ids unique across COCO JSONs / image lists (e.g. train and val both numbered from 1).

    The first file keeps its ids; a repeated id gets a new one above all ids, annotations follow, and
    id_map.json records what changed. Remap the full annotation files, then run make-splits on them."""
    from dgseg.pipeline.data.remap_ids import remap_ids

    try:
        result = remap_ids([Path(p) for p in jsons], Path(out_dir))
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    for src, out in zip(jsons, result.outputs, strict=True):
        click.echo(f"{out}: {len(result.changed[src])} ids changed (from {src})")
    click.echo(f"mapping: {result.map_path}")


@main.command("convert-cityscapes")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False), help="Cityscapes root.")
@click.option("--split", default="train", show_default=True)
@click.option("--out", "out_json", required=True, type=click.Path(dir_okay=False))
def convert_cityscapes(root: str, split: str, out_json: str) -> None:
    """Convert Cityscapes gtFine instance PNGs to COCO JSON (8 instance classes)."""
    from dgseg.pipeline.data.cityscapes import convert

    try:
        summary = convert(Path(root), split, Path(out_json))
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    click.echo(summary)


# ---------------------------------------------------------------- stage one (depth_cache)
# (commands: precompute-depth, cache ls/info/verify/export)


def _stage_one_cfg(config: str | None, overrides: tuple[str, ...], estimator=None, weights=None, depth_dir=None,
                   depth_kind=None, root=None):  # fmt: skip
    """The config with the command-line options applied (None keeps the config's value)."""
    cfg = _load(config, overrides)
    est = cfg.depth.estimator
    given = {"name": estimator, "weights": weights, "depth_dir": depth_dir, "depth_kind": depth_kind}
    for attr, value in given.items():
        if value is not None:
            setattr(est, attr, value)
    if root is not None:
        cfg.depth.cache.root = root
    return cfg


@main.command("precompute-depth")
@CONFIG_OPTION
@click.option("--coco", "jsons", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="COCO JSON (or any {images: [...]} list) whose images to cover; repeatable.")
@click.option("--split", "splits", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Unlabelled image list from make-splits; repeatable.")
@click.option("--image-dir", type=click.Path(exists=True, file_okay=False), help="Folder of the JSONs' images.")
@click.option("--image-folder", type=click.Path(exists=True, file_okay=False),
              help="A bare image folder (ids = content hashes).")
@click.option("--estimator", help="depth-anything-v2-{vits,vitb,vitl,vitg}, tiny or files.")
@click.option("--weights", type=click.Path(exists=True),
              help="Official DAv2 checkpoint (.pth) or a Hugging Face model folder (config.json + model.safetensors).")
@click.option("--depth-dir", type=click.Path(exists=True, file_okay=False), help="`files`: folder of depth maps.")
@click.option("--depth-kind", type=click.Choice(["depth", "disparity"]), help="`files`: what the maps hold.")
@click.option("--root", help="Cache root: a folder or an fsspec URL.")
@click.option("--retry-failed", is_flag=True, help="Try again the images that failed in an earlier run.")
@click.option("--allow-symlinks-outside", is_flag=True,
              help="Accept image files that are symlinks to outside their folder (else refused; "
                   "also data.allow_symlinks_outside).")  # fmt: skip
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.argument("overrides", nargs=-1)
def precompute_depth(config, jsons, splits, image_dir, image_folder, estimator, weights, depth_dir, depth_kind,
                     root, retry_failed, allow_symlinks_outside, quiet, overrides) -> None:  # fmt: skip
    """Run the depth source once over the images into the shared cache (resumable; torchrun for N processes).

    Without --coco/--split/--image-folder it covers the config's labelled, unlabelled and val images."""
    from dgseg.depth_cache.images import merge_records, records_from_folder, records_from_json
    from dgseg.pipeline.precompute import config_records, precompute

    cfg = _stage_one_cfg(config, overrides, estimator=estimator, weights=weights, depth_dir=depth_dir,
                         depth_kind=depth_kind, root=root)  # fmt: skip
    links = allow_symlinks_outside or cfg.data.allow_symlinks_outside
    cfg.depth.estimator.allow_symlinks_outside = links or cfg.depth.estimator.allow_symlinks_outside
    try:
        groups = []
        if jsons or splits:
            folder = image_dir or cfg.data.image_dir
            groups += [records_from_json(p, folder, links) for p in (*jsons, *splits)]
        if image_folder:
            groups.append(records_from_folder(image_folder, links))
        records = merge_records(groups) if groups else config_records(cfg)
        result = precompute(cfg, records, retry_failed=retry_failed, progress=not quiet)
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from err
    if result.lost_shards:
        click.echo(f"shards {result.lost_shards}: computed, but dropped: this job's claim lapsed and another job took "
                   "them over (is the machine overloaded? raise depth.cache.lease_s)")  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"cache {result.key} at {result.root}: {result.computed} computed in this process "
                   f"({result.images_per_s:.1f} img/s), {result.already_done} already there, "
                   f"{len(result.failed)} failed, {result.skipped_failed} skipped (failed before)")  # fmt: skip
        for image_id, why in sorted(result.failed.items())[:20]:
            click.echo(f"  failed {image_id}: {why}")


@main.group("cache")
def cache_group() -> None:
    """Inspect, check and export depth caches."""


def _root(root: str | None, config: str | None) -> str:
    return root if root is not None else _load(config, ()).depth.cache.root


ROOT_OPTION = click.option("--root", help="Cache root (default: the config's depth.cache.root).")


@cache_group.command("ls")
@ROOT_OPTION
@CONFIG_OPTION
def cache_ls(root: str | None, config: str | None) -> None:
    """Caches under the root: key, estimator, images, levels, dtype, size."""
    from dgseg.depth_cache.catalog import list_summaries

    rows = list_summaries(_root(root, config))
    if not rows:
        click.echo("no caches")
    for r in rows:
        click.echo(f"{r['key']}  {r['estimator']:<26} {r['images']:>8} images  {r['failed']:>4} failed  "
                   f"{','.join(r['levels']):<20} {r['dtype']:<5} {r['bytes'] / 1e6:10.2f} MB")  # fmt: skip


@cache_group.command("info")
@click.argument("key")
@ROOT_OPTION
@CONFIG_OPTION
def cache_info_cmd(key: str, root: str | None, config: str | None) -> None:
    """Images, bytes per image per level, levels, dtype and estimator of one cache."""
    from dgseg.depth_cache.catalog import cache_info
    from dgseg.depth_cache.store import CacheError

    try:
        info = cache_info(_root(root, config), key)
    except CacheError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"cache {info['key']} at {info['root']}")
    click.echo(f"  images {info['images']} in {info['shards']} shards of {info['shard_size']}; "
               f"failed {len(info['failed'])}; dtype {info['dtype']}; canvas {info['canvas']}")  # fmt: skip
    click.echo(f"  estimator: {json.dumps(info['fields'], sort_keys=True)}")
    click.echo(f"  {'map':<10} {'C':>4} {'canvas grid':>12} {'stored B/img':>13} {'raw B/img':>11}")
    for name, m in info["maps"].items():
        click.echo(f"  {name:<10} {m['channels']:>4} {str(tuple(m['canvas_grid'])):>12} "
                   f"{m['stored_bytes_per_image']:>13.0f} {m['raw_bytes_per_image']:>11.0f}")  # fmt: skip
    total = sum(m["stored_bytes_per_image"] for m in info["maps"].values())
    click.echo(f"  {'total':<10} {'':>4} {'':>12} {total:>13.0f}   ({info['total_bytes'] / 1e6:.2f} MB on disk)")
    for image_id, why in sorted(info["failed"].items())[:20]:
        click.echo(f"  failed {image_id}: {why}")


@cache_group.command("verify")
@click.argument("key")
@ROOT_OPTION
@CONFIG_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--repair", is_flag=True,
              help="Drop the shards with problems (markers and files) so that precompute-depth recomputes them. "
                   "Not while a precompute job writes this cache.")  # fmt: skip
def cache_verify_cmd(key: str, root: str | None, config: str | None, quiet: bool, repair: bool) -> None:
    """Every finished entry readable, finite, of the right shape; per-shard checksums re-checked."""
    from dgseg.depth_cache.catalog import repair_cache, verify_cache
    from dgseg.depth_cache.store import CacheError

    root = _root(root, config)
    try:
        result = verify_cache(root, key, progress=not quiet)
    except CacheError as err:
        raise click.ClickException(str(err)) from err
    for problem in result.problems[:50]:
        click.echo(f"  {problem}")
    click.echo(f"{'ok' if result.ok else 'FAILED'}: {result.images} images in {result.shards} shards, "
               f"{len(result.problems)} problems")  # fmt: skip
    if result.ok:
        return
    if repair:
        report = repair_cache(root, key, result.bad_shards)
        click.echo(f"repaired: dropped shards {result.bad_shards}; {report['images']} images remain; "
                   "run precompute-depth again (same inputs) to recompute the dropped images")  # fmt: skip
        return
    click.echo(f"run `cache verify {key} --root {root} --repair` to drop the damaged shards, then precompute-depth")
    sys.exit(1)


@cache_group.command("export")
@click.argument("key")
@click.option("--format", "fmt", type=click.Choice(["hdf5"]), default="hdf5", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output file.")
@ROOT_OPTION
@CONFIG_OPTION
def cache_export_cmd(key: str, fmt: str, out: str, root: str | None, config: str | None) -> None:
    """Write a cache's finished entries to one portable HDF5 file."""
    from dgseg.depth_cache.export import export_hdf5
    from dgseg.depth_cache.store import CacheError

    try:
        summary = export_hdf5(_root(root, config), key, out)
    except CacheError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {summary['images']} images to {summary['path']}")



# ---------------------------------------------------------------- stage two (pipeline)
# (commands: train, evaluate, predict)


@main.command("train", context_settings={"ignore_unknown_options": False})
@CONFIG_OPTION
@click.option("--resume", is_flag=True, help="Continue from the run's last checkpoint (exactly).")
@click.option("--overwrite", is_flag=True,
              help="The run folder holds an earlier run: delete its checkpoints and metrics and start afresh.")
@click.argument("overrides", nargs=-1)
def train_cmd(config: str | None, resume: bool, overwrite: bool, overrides: tuple[str, ...]) -> None:
    """Train (supervised, or teacher-student when semi.enabled) reading depth from the cache.

    A run folder (train.output_dir) that already holds a run is refused unless --resume or --overwrite."""
    from dgseg.pipeline.engine.run_dir import prepare_run_dir

    if config is None:
        raise click.ClickException(TRAIN_NEEDS_CONFIG)
    cfg = _load(config, overrides)
    try:  # before anything imports torch, so a refusal is immediate
        prepare_run_dir(cfg.train.output_dir, resume, overwrite, is_main=int(os.environ.get("RANK", "0")) == 0)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    from dgseg.pipeline.train import train

    try:
        metrics = train(cfg, resume=resume)
    except _user_errors() as err:
        raise click.ClickException(_message(err)) from err
    if metrics:
        click.echo(f"final val mask AP: {metrics.get('AP', float('nan')):.2f}")


@main.command("evaluate")
@CONFIG_OPTION
@click.option("--checkpoint", required=True, type=click.Path(exists=True),
              help="Checkpoint file, or a run folder (its final weights, else its last checkpoint).")
@click.option("--which", type=click.Choice(["auto", "model", "teacher", "student", "both"]), default="auto",
              show_default=True, help="Weights to evaluate; auto = the teacher when the checkpoint has one; "
              "student = the trained model of a teacher-student run; both = teacher and student.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where metrics.json/results.json go.")
@click.argument("overrides", nargs=-1)
def evaluate_cmd(config: str | None, checkpoint: str, which: str, out_dir: str | None,
                 overrides: tuple[str, ...]) -> None:
    """COCO mask AP of a checkpoint on the val split (depth read from the cache). Without --config, the
    config.yaml of the checkpoint's run folder."""
    from dgseg.pipeline.engine.evaluate import evaluate_checkpoint

    cfg = _load(_run_config(config, checkpoint), overrides)
    try:
        evaluate_checkpoint(cfg, checkpoint, out_dir, which)
    except _user_errors() as err:
        raise click.ClickException(_message(err)) from err


@main.command("predict")
@CONFIG_OPTION
@click.option("--checkpoint", required=True, type=click.Path(exists=True),
              help="Checkpoint file, or a run folder (its final weights, else its last checkpoint).")
@click.option("--images", "inputs", required=True, multiple=True, type=click.Path(exists=True),
              help="Image files or folders; repeatable.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--which", type=click.Choice(["auto", "model", "teacher", "student"]), default="auto",
              show_default=True, help="Weights to use; auto = the teacher when the checkpoint has one; "
              "student = the trained model of a teacher-student run (= model).")
@click.option("--score-threshold", default=0.5, show_default=True,
              help="Draw and write instances scoring at least this (0 keeps all top-k).")
@click.argument("overrides", nargs=-1)
def predict_cmd(config: str | None, checkpoint: str, inputs: tuple[str, ...], out_dir: str, which: str,
                score_threshold: float, overrides: tuple[str, ...]) -> None:
    """Segment new images (running the depth source on them): masks drawn to PNG files, COCO results
    (the dataset's category ids, RLE) to results.json, per-image counts and notes to summary.json.
    Without --config, the config.yaml of the checkpoint's run folder."""
    from dgseg.pipeline.engine.predict import predict_images

    cfg = _load(_run_config(config, checkpoint), overrides)
    try:
        written = predict_images(cfg, checkpoint, [Path(p) for p in inputs], Path(out_dir), which, score_threshold)
    except _user_errors() as err:
        raise click.ClickException(_message(err)) from err
    summary = json.loads((Path(out_dir) / "summary.json").read_text())
    empty = [Path(r["file"]).name for r in summary["images"] if not r["instances"]]
    click.echo(f"wrote {len(written)} pictures, results.json and summary.json to {out_dir} "
               f"(weights: {summary['weights']}, image ids: {summary['image_ids']})")
    if empty:
        click.echo(f"{len(empty)} of {len(written)} images have no instance scoring >= {score_threshold:g}: "
                   + ", ".join(empty[:10]) + (", ..." if len(empty) > 10 else ""))


# ---------------------------------------------------------------- configuration
# (command group: config)


@main.group("config")
def config_group() -> None:
    """Inspect configurations."""


@config_group.command("list")
def config_list_cmd() -> None:
    """The shipped configs, by name (give one to --config, or copy it as a start for your own)."""
    from dgseg.pipeline.config import config_path, shipped_configs

    for name in shipped_configs():
        click.echo(f"{name:20s} {config_path(name)}")


@config_group.command("show")
@CONFIG_OPTION
@click.option("--changed", is_flag=True, help="Only the keys whose value differs from the default.")
@click.option("--markdown", is_flag=True, help="Markdown tables (docs/config.md is this for the defaults).")
@click.argument("overrides", nargs=-1)
def config_show_cmd(config: str | None, changed: bool, markdown: bool, overrides: tuple[str, ...]) -> None:
    """The resolved config: every key with its value, default, source and meaning (* = not the default).

    Checks it as training would: a value out of range fails, schedule traps are warned about."""
    from dgseg.pipeline.config.show import format_config, format_config_markdown

    resolved = _resolve(config, overrides)
    if markdown:
        click.echo(format_config_markdown(resolved), nl=False)
    else:
        click.echo(format_config(resolved, changed_only=changed))


# ---------------------------------------------------------------- benchmarks
# (command group: bench)


@main.group("bench")
def bench_group() -> None:
    """Benchmarks that print side-by-side tables."""


@bench_group.command("cache")
@click.option("--images", default=256, show_default=True, help="Images to precompute and read.")
@click.option("--input-size", default=126, show_default=True, help="tiny's input short side.")
@click.option("--reads", default=512, show_default=True, help="Random reads per reader.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--vits", is_flag=True, help="Also time vits at 518 (random weights; meant for a GPU).")
@click.option("--vitl", is_flag=True, help="Also time vitl at 518 (random weights; meant for a GPU).")
@click.option("--batch-size", default=8, show_default=True, help="Images per estimator call.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the estimator (both columns).")
@click.option("--workers", type=int, help="Loader workers (default: depth_cache.decode.default_workers).")
@click.option("--work-dir", type=click.Path(file_okay=False), help="Scratch folder (default: a temp dir).")
@click.option("--fingerprints", type=int, default=None,
              help="Instead: the cost of checking this many images against their entries' fingerprints "
                   "at training start (e.g. 100000).")  # fmt: skip
def bench_cache_cmd(images: int, input_size: int, reads: int, device: str, vits: bool, vitl: bool, batch_size: int,
                    compile_: bool, workers: int | None, work_dir: str | None, fingerprints: int | None) -> None:
    """Stage one: estimator alone vs precompute img/s, bytes per image per level, reader vs .npy img/s."""
    from dgseg.bench.bench_cache import run_bench, run_fingerprint_bench

    if fingerprints is not None:
        run_fingerprint_bench(images=fingerprints, work_dir=work_dir)
        return
    run_bench(images=images, input_size=input_size, reads=reads, device=device, vits=vits, work_dir=work_dir,
              vitl=vitl, batch_size=batch_size, compile=compile_, workers=workers)


@bench_group.command("fusion")
@click.option("--backbone", default="resnet18", show_default=True)
@click.option("--image-size", default=128, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--steps", default=10, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def bench_fusion_cmd(backbone: str, image_size: int, batch_size: int, steps: int, device: str) -> None:
    """Segmenter step time with Depth Fusion (precomputed features) / without depth."""
    from dgseg.bench.bench_fusion import run_bench

    run_bench(backbone=backbone, image_size=image_size, batch_size=batch_size, steps=steps, device=device)


@bench_group.command("step")
@click.option("--steps", default=20, show_default=True, help="Timed steps per mode.")
@click.option("--image-size", default=128, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--estimator", default="tiny", show_default=True, help="tiny, or depth-anything-v2-* with --weights.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False))
@click.option("--input-size", default=126, show_default=True, help="Estimator input short side.")
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", default=2, show_default=True, help="DataLoader workers.")
@click.option("--work-dir", type=click.Path(file_okay=False), help="Scratch folder (default: a temp dir).")
@click.option("--semi", is_flag=True, help="Teacher-student stage B instead: where a step's time goes, per part.")
@click.option("--teacher-iters", default=2, show_default=True, help="--semi: stage-A steps before stage B.")
@click.option("--backbone", default="resnet18", show_default=True, help="The segmenter's timm backbone.")
@click.option("--accumulate", default=1, show_default=True, help="--semi: train.accumulate (micro-batches per step).")
@click.option("--checkpointing", is_flag=True, help="--semi: model.activation_checkpointing on.")
def bench_step_cmd(steps: int, image_size: int, batch_size: int, estimator: str, weights: str | None,
                   input_size: int, device: str, workers: int, work_dir: str | None, semi: bool,
                   teacher_iters: int, backbone: str, accumulate: int, checkpointing: bool) -> None:
    """Training-step time with cached depth, online depth and no depth (the real loop), as ratios;
    with --semi, the breakdown of a teacher-student stage-B step."""
    from dgseg.bench.bench_step import run_bench, run_semi_bench

    kw = dict(steps=steps, image_size=image_size, batch_size=batch_size, estimator=estimator, weights=weights,
              input_size=input_size, device=device, work_dir=work_dir, workers=workers, backbone=backbone)
    if semi:
        run_semi_bench(**kw, teacher_iters=teacher_iters, accumulate=accumulate, checkpointing=checkpointing)
    else:
        run_bench(**kw)


@bench_group.command("anchor", context_settings={"ignore_unknown_options": False})
@CONFIG_OPTION
@click.option("--iters", type=int, help="Training iterations of every run (default: the config's train.max_iter).")
@click.option("--batch-size", type=int, help="Images per step of every run (default: the config's train.batch_size).")
@click.option("--modes", default="rgb,depth,rgbd", show_default=True,
              help="Mask R-CNN input modes, comma-separated: rgb, depth, rgbd (RGB + depth as a 4th channel).")
@click.option("--project/--no-project", default=True, show_default=True,
              help="Also train and evaluate the project's model (supervised, the config's Depth Fusion setting).")
@click.option("--norm", type=click.Choice(["bn", "frozen"]), default="bn", show_default=True,
              help="Mask R-CNN backbone norm: BatchNorm2d, or torchvision's FrozenBatchNorm2d (identity at init).")
@click.option("--equal-time", type=click.Choice(["rgb", "depth", "rgbd"]), default=None,
              help="Train the project for as long as this anchor trained (iterations from a short probe), "
                   "instead of for the same iterations.")
@click.option("--probe-iters", type=int, default=12, show_default=True,
              help="--equal-time: iterations of the probe that measures the project's s/it (the first 3 not timed).")
@click.option("--time-tolerance", type=float, default=0.05, show_default=True,
              help="--equal-time: when the project's training time misses the anchor's by more than this "
                   "fraction, it trains once more with its iterations rescaled by its own measured s/it.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_dir", default="runs/bench_anchor", show_default=True, type=click.Path(file_okay=False),
              help="Where every run's output goes (must be empty or absent).")
@click.argument("overrides", nargs=-1)
def bench_anchor_cmd(config: str | None, iters: int | None, batch_size: int | None, modes: str, project: bool,
                     norm: str, equal_time: str | None, probe_iters: int, time_tolerance: float, device: str,
                     out_dir: str, overrides: tuple[str, ...]) -> None:
    """Mask R-CNN anchor (RGB, depth, RGB + depth) beside the project's model: mask AP and wall time, one table."""
    from dgseg.bench.bench_anchor import parse_modes, run_bench

    cfg = _load(config, overrides)
    try:
        run_bench(cfg, iters=iters, batch_size=batch_size, modes=tuple(parse_modes(modes)), project=project,
                  device=device, out_dir=out_dir, norm=norm, equal_time=equal_time, probe_iters=probe_iters,
                  time_tolerance=time_tolerance)
    except (*_user_errors(), FileExistsError) as err:
        raise click.ClickException(_message(err)) from err


if __name__ == "__main__":
    sys.exit(main())
