"""`cli.py precompute-depth` without options: stage one over the images a config trains and evaluates on."""

from __future__ import annotations

from pathlib import Path

from dgseg.depth_cache.images import ImageRecord, merge_records, records_from_json
from dgseg.depth_cache.precompute import PrecomputeResult, run_precompute
from dgseg.pipeline.config import Config


def config_records(cfg: Config) -> list[ImageRecord]:
    """The labelled, unlabelled and val images of `cfg.data`, each once."""
    data = cfg.data
    links = data.allow_symlinks_outside or cfg.depth.estimator.allow_symlinks_outside
    pairs = [(data.train_json, data.image_dir), (data.unlabeled_list, data.image_dir),
             (data.val_json, data.val_image_dir)]  # fmt: skip
    # a configured file that is missing is an error, not a skip: skipping it would leave the cache
    # without the training images and only `train` would notice
    missing = [str(p) for p, _ in pairs if p and not Path(p).is_file()]
    if missing:
        raise ValueError(f"the config's data files do not exist: {', '.join(missing)} (make them first, "
                         "e.g. with make-synthetic/make-splits, or give --coco/--split/--image-folder)")
    return merge_records([records_from_json(p, d, links) for p, d in pairs if p])


def precompute(cfg: Config, records: list[ImageRecord] | None = None, *, retry_failed: bool = False,
               progress: bool = True) -> PrecomputeResult:
    """Run `cfg.depth`'s estimator once over `records` (default: the config's images) into the shared cache."""
    if records is None:
        records = config_records(cfg)
    links = cfg.data.allow_symlinks_outside or cfg.depth.estimator.allow_symlinks_outside
    cfg.depth.estimator.allow_symlinks_outside = links
    return run_precompute(records, cfg.depth.estimator, cfg.depth.cache, retry_failed=retry_failed,
                          progress=progress)  # fmt: skip
