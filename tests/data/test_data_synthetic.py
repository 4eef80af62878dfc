"""The generated RGB-D dataset: annotations agree with pycocotools, masks are disjoint, output is deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pipeline.data.synthetic import generate_dataset, render_scene


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_annotations_match_masks(tmp_path):
    generate_dataset(tmp_path, num_train=24, num_val=6, size=64, seed=3)
    for split, n in (("train", 24), ("val", 6)):
        coco = COCO(str(tmp_path / "annotations" / f"{split}.json"))
        assert len(coco.getImgIds()) == n
        assert sorted(coco.getCatIds()) == [1, 2, 3]
        for img in coco.loadImgs(coco.getImgIds()):
            rgb = Image.open(tmp_path / "images" / split / img["file_name"])
            assert rgb.mode == "RGB" and rgb.size == (64, 64)
            depth = np.asarray(Image.open(tmp_path / "depth" / img["file_name"]))
            assert depth.shape == (64, 64) and depth.dtype == np.uint16
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert anns, "every scene keeps at least one object"
            cover = np.zeros((64, 64), dtype=np.int32)
            for a in anns:
                rle = coco.annToRLE(a)
                m = mask_utils.decode(rle).astype(bool)
                assert int(mask_utils.area(rle)) == a["area"] == m.sum() > 0
                ys, xs = np.nonzero(m)
                expected = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert np.allclose(a["bbox"], expected)
                cover += m
                # objects (<= 5.2 m) are nearer than the background (>= 5.8 m)
                assert depth[m].max() < 5300
            assert cover.max() <= 1, "masks of one image overlap"
            assert depth[cover == 0].min() >= 5800 if (cover == 0).any() else True


def test_ids_unique_across_splits(tmp_path):
    generate_dataset(tmp_path, num_train=5, num_val=5, size=32, seed=0)
    train = COCO(str(tmp_path / "annotations" / "train.json"))
    val = COCO(str(tmp_path / "annotations" / "val.json"))
    assert not set(train.getImgIds()) & set(val.getImgIds())
    assert not set(train.getAnnIds()) & set(val.getAnnIds())


def test_deterministic_per_seed(tmp_path):
    generate_dataset(tmp_path / "a", num_train=8, num_val=2, size=48, seed=7)
    generate_dataset(tmp_path / "b", num_train=8, num_val=2, size=48, seed=7)
    generate_dataset(tmp_path / "c", num_train=8, num_val=2, size=48, seed=8)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_colour_does_not_give_the_instances_away():
    # the mean colour of objects and of the background are close: both drawn from one palette
    rng = np.random.default_rng(0)
    obj, bg = [], []
    for _ in range(40):
        rgb, _, masks, _ = render_scene(rng, 64)
        fg = masks.any(0)
        obj.append(rgb[fg].mean(0))
        bg.append(rgb[~fg].mean(0))
    assert np.abs(np.mean(obj, 0) - np.mean(bg, 0)).max() < 20


def test_generates_200_images(tmp_path):
    summary = generate_dataset(tmp_path, num_train=200, num_val=0, size=128, seed=0)
    assert "200 images" in summary
    assert len(list((tmp_path / "images" / "train").glob("*.png"))) == 200
