"""Cityscapes converter on a generated sample in Cityscapes' file layout."""

from __future__ import annotations

import numpy as np
import pytest
from dgseg.pipeline.data.cityscapes import convert
from dgseg.pipeline.data.coco import load_coco
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO


def _sample(root, with_images=True):
    ids = {}
    for city, name in (("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")):
        arr = np.full((32, 64), 7, dtype=np.int32)  # road (stuff)
        arr[2:10, 2:12] = 26001  # car #1
        arr[12:20, 2:12] = 26002  # car #2
        arr[20:30, 40:50] = 24000  # person #0
        arr[0:4, 50:60] = 26  # a car group without instance ids -> crowd
        arr[25:30, 0:5] = 21000 if city == "bonn" else 7  # not an instance class: ignored
        gt = root / "gtFine" / "val" / city
        gt.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.astype(np.uint16)).save(gt / f"{name}_gtFine_instanceIds.png")
        if with_images:
            img = root / "leftImg8bit" / "val" / city
            img.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 32)).save(img / f"{name}_leftImg8bit.png")
        ids[f"{city}/{name}_leftImg8bit.png"] = arr
    return ids


def test_convert(tmp_path):
    arrays = _sample(tmp_path)
    summary = convert(tmp_path, "val", tmp_path / "out" / "val.json")
    assert "2 images, 6 instances, 2 crowd" in summary
    coco = COCO(str(tmp_path / "out" / "val.json"))
    assert sorted(coco.getCatIds()) == [24, 25, 26, 27, 28, 31, 32, 33]
    load_coco(tmp_path / "out" / "val.json", tmp_path / "leftImg8bit" / "val")  # our loader accepts it
    for img in coco.loadImgs(coco.getImgIds()):
        arr = arrays[img["file_name"]]
        assert (img["height"], img["width"]) == arr.shape
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        found = set()
        for a in anns:
            m = mask_utils.decode(coco.annToRLE(a)).astype(bool)
            value = np.unique(arr[m])
            assert len(value) == 1 and m.sum() == (arr == value[0]).sum() == a["area"]
            ys, xs = np.nonzero(m)
            assert np.allclose(a["bbox"], [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1])
            assert a["iscrowd"] == int(value[0] < 1000)
            assert a["category_id"] == (value[0] // 1000 if value[0] >= 1000 else value[0])
            found.add(int(value[0]))
        assert found == {26001, 26002, 24000, 26}


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no \\*/\\*_gtFine_instanceIds.png"):
        convert(tmp_path, "val", tmp_path / "x.json")
    _sample(tmp_path, with_images=False)
    with pytest.raises(ValueError, match="2 images .* are missing"):
        convert(tmp_path, "val", tmp_path / "x.json")
