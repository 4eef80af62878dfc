"""The README's "Your own data" walk-through up to training's inputs: ids that overlap between train
and val are remapped, make-splits runs on the remapped train JSON, and `configs/custom_dav2.yaml`
with its paths overridden builds the labelled, unlabelled and val datasets."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from dgseg.depth_cache.images import merge_records, records_from_json
from dgseg.pipeline.config.loading import ConfigWarning, load_config
from dgseg.pipeline.data.dataset import build_train_dataset, build_unlabeled_dataset, build_val_dataset
from dgseg.pipeline.data.remap_ids import remap_ids
from dgseg.pipeline.data.splits import make_splits
from dgseg.pipeline.data.synthetic import generate_dataset

TEMPLATE = Path(__file__).resolve().parents[1] / "configs" / "custom_dav2.yaml"


def test_custom_template_is_a_dav2_config_without_schedule_traps():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        cfg = load_config(TEMPLATE)
    assert cfg.depth.estimator.name == "depth-anything-v2-vits" and cfg.depth.estimator.input_size % 14 == 0
    assert cfg.semi.enabled and cfg.semi.burn_in_iter < cfg.train.max_iter - cfg.semi.teacher_iters


def test_own_data_with_overlapping_ids_to_the_template_datasets(tmp_path):
    generate_dataset(tmp_path / "photos", num_train=12, num_val=3, size=64, seed=5)
    ann = tmp_path / "photos" / "annotations"
    val = json.loads((ann / "val.json").read_text())  # number val from 1, as converted datasets do
    shift = {r["id"]: k + 1 for k, r in enumerate(val["images"])}
    val["images"] = [{**r, "id": shift[r["id"]]} for r in val["images"]]
    val["annotations"] = [{**a, "image_id": shift[a["image_id"]]} for a in val["annotations"]]
    (ann / "val.json").write_text(json.dumps(val))
    images = tmp_path / "photos" / "images"
    with pytest.raises(ValueError, match="remap-ids"):
        merge_records([records_from_json(ann / "train.json", images / "train"),
                       records_from_json(ann / "val.json", images / "val")])

    fixed = remap_ids([ann / "train.json", ann / "val.json"], tmp_path / "remapped")
    make_splits(fixed.outputs[0], tmp_path / "splits", percents=[25], seeds=[0])
    cfg = load_config(TEMPLATE, [
        f"data.image_dir={images / 'train'}", f"data.val_image_dir={images / 'val'}",
        f"data.train_json={tmp_path / 'splits' / 'train_25pct_seed0_labeled.json'}",
        f"data.unlabeled_list={tmp_path / 'splits' / 'train_25pct_seed0_unlabeled.json'}",
        f"data.val_json={fixed.outputs[1]}", "data.num_classes=3",
    ])
    labeled, unlabeled, val_ds = build_train_dataset(cfg), build_unlabeled_dataset(cfg), build_val_dataset(cfg)
    assert (len(labeled), len(unlabeled), len(val_ds)) == (3, 9, 3)
    ids = [{r["id"] for r in ds.images} for ds in (labeled, unlabeled, val_ds)]
    assert not (ids[0] & ids[2]) and not (ids[1] & ids[2]) and not (ids[0] & ids[1])
    sample = val_ds[0]
    assert len(sample.labels) == len(val_ds.data.instances(val_ds.images[0]["id"]))  # annotations followed
