"""A tiny generated dataset with its depth cache, built once per test session for the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from dgseg.depth_cache.images import merge_records, records_from_json
from dgseg.depth_cache.precompute import run_precompute
from dgseg.pipeline.config import Config
from dgseg.pipeline.config.loading import load_config
from dgseg.pipeline.data.splits import make_splits
from dgseg.pipeline.data.synthetic import generate_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_rgbd")
    generate_dataset(root, num_train=24, num_val=6, size=64, seed=3)
    make_splits(root / "annotations/train.json", root / "splits", percents=[25.0], seeds=[0],
                unlabeled_includes_labeled=False)
    return root


def _tiny_config(root: Path, out_dir: Path, *overrides: str) -> Config:
    """A Mask2Former small enough for a few CPU steps per second, reading the tiny dataset's cache."""
    base = [
        f"data.image_dir={root}/images/train",
        f"data.train_json={root}/splits/train_25pct_seed0_labeled.json",
        f"data.unlabeled_list={root}/splits/train_25pct_seed0_unlabeled.json",
        f"data.val_image_dir={root}/images/val",
        f"data.val_json={root}/annotations/val.json",
        "data.image_size=64", "data.test_size=64", "data.num_workers=0",
        "depth.estimator.name=files", f"depth.estimator.depth_dir={root}/depth", "depth.estimator.input_size=64",
        f"depth.cache.root={root}/caches", "depth.cache.levels=[depth_s8, depth_s16]",
        "model.hidden_dim=32", "model.mask_dim=32", "model.num_queries=6", "model.nheads=2",
        "model.dim_feedforward=64", "model.dec_layers=2", "model.enc_layers=1", "model.train_num_points=256",
        "model.depth_fusion.sources={res3: depth_s8, res4: depth_s16}",
        "train.batch_size=2", "train.warmup_iters=1", "train.log_period=1", "train.eval_period=0",
        "train.checkpoint_period=2", f"train.output_dir={out_dir}",
        "semi.unlabeled_batch_size=2", "semi.min_mask_area=1",
        "eval.batch_size=6",
    ]
    return load_config(None, base + list(overrides))


@pytest.fixture(scope="session")
def tiny_cache(tiny_data) -> Path:
    cfg = _tiny_config(tiny_data, tiny_data / "runs")
    records = merge_records([records_from_json(tiny_data / "annotations/train.json", tiny_data / "images/train"),
                             records_from_json(tiny_data / "annotations/val.json", tiny_data / "images/val")])
    run_precompute(records, cfg.depth.estimator, cfg.depth.cache, progress=False)
    return tiny_data


@pytest.fixture
def tiny_config():
    """`tiny_config(root, out_dir, *overrides) -> Config`."""
    return _tiny_config
