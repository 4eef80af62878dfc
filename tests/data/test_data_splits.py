"""Label splits: deterministic, disjoint, covering, at least one labelled image, clear errors."""

from __future__ import annotations

import json

import pytest
from dgseg.pipeline.data.coco import DataError, load_coco, load_image_list
from dgseg.pipeline.data.splits import make_splits
from pycocotools.coco import COCO


@pytest.fixture
def ann(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "height": 8, "width": 8} for i in range(1, 41)]
    anns = [{"id": 100 + i, "image_id": i, "category_id": 1, "segmentation": {"size": [8, 8], "counts": [0, 64]},
             "area": 64, "bbox": [0, 0, 8, 8], "iscrowd": 0} for i in range(1, 41)]  # fmt: skip
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    return path


def _ids(path, labeled):
    if labeled:
        return {r["id"] for r in load_coco(path).images}
    return {r["id"] for r in load_image_list(path)}


def test_splits(ann, tmp_path):
    written = make_splits(ann, tmp_path / "s", percents=[1, 5, 50], seeds=[0, 1])
    assert len(written) == 12
    assert (tmp_path / "s" / "train_5pct_seed0_labeled.json").is_file()
    everything = set(range(1, 41))
    for seed in (0, 1):
        previous = set()
        for p, count in ((1, 1), (5, 2), (50, 20)):
            lab_path = tmp_path / "s" / f"train_{p}pct_seed{seed}_labeled.json"
            lab = _ids(lab_path, True)
            unl = _ids(tmp_path / "s" / f"train_{p}pct_seed{seed}_unlabeled.json", False)
            assert len(lab) == count  # >= 1 even when 1 % of 40 rounds to 0
            assert not lab & unl and lab | unl == everything
            assert previous <= lab  # nested within a seed
            previous = lab
            coco = COCO(str(lab_path))  # pycocotools loads it; annotations follow their images
            assert {a["image_id"] for a in coco.dataset["annotations"]} == lab
    seed0 = _ids(tmp_path / "s" / "train_50pct_seed0_labeled.json", True)
    seed1 = _ids(tmp_path / "s" / "train_50pct_seed1_labeled.json", True)
    assert seed0 != seed1


def test_deterministic(ann, tmp_path):
    a = make_splits(ann, tmp_path / "a", percents=[10], seeds=[3])
    b = make_splits(ann, tmp_path / "b", percents=[10], seeds=[3])
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes()


def test_unlabeled_may_include_labeled(ann, tmp_path):
    make_splits(ann, tmp_path, percents=[10], seeds=[0], unlabeled_includes_labeled=True)
    assert _ids(tmp_path / "train_10pct_seed0_unlabeled.json", False) == set(range(1, 41))


def test_errors(ann, tmp_path):
    with pytest.raises(ValueError, match="percent"):
        make_splits(ann, tmp_path, percents=[0], seeds=[0])
    with pytest.raises(ValueError, match="percent"):
        make_splits(ann, tmp_path, percents=[150], seeds=[0])
    with pytest.raises(ValueError, match="at least one"):
        make_splits(ann, tmp_path, percents=[5], seeds=[])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: malformed JSON"):
        make_splits(bad, tmp_path, percents=[5], seeds=[0])
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1}]}))
    with pytest.raises(DataError, match="empty.json: empty"):
        make_splits(empty, tmp_path, percents=[5], seeds=[0])
