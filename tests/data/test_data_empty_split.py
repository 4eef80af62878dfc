"""A labelled split without training annotations is refused, naming the file (it used to train on nothing)."""

from __future__ import annotations

import json

import pytest
from dgseg.pipeline.config import Config
from dgseg.pipeline.data.coco import DataError
from dgseg.pipeline.data.dataset import build_train_dataset
from dgseg.pipeline.data.synthetic import generate_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn_empty")
    generate_dataset(root, num_train=4, num_val=2, size=64, seed=2)
    return root


def _cfg(root, train_json):
    cfg = Config()
    cfg.data.image_dir, cfg.data.train_json = str(root / "images" / "train"), str(train_json)
    cfg.data.image_size = 64
    return cfg


@pytest.mark.parametrize("kind", ["no annotations", "crowd only"])
def test_labelled_split_without_instances_is_refused(root, tmp_path, kind):
    data = json.loads((root / "annotations" / "train.json").read_text())
    if kind == "no annotations":
        data["annotations"] = []
    else:
        data["annotations"] = [{**a, "iscrowd": 1} for a in data["annotations"]]
    bad = tmp_path / "labeled.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"{bad}: the labelled split has no training annotations \(4 images"):
        build_train_dataset(_cfg(root, bad))
    # the same images with their annotations build
    assert len(build_train_dataset(_cfg(root, root / "annotations" / "train.json"))) == 4
