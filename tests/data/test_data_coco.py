"""COCO loading: every segmentation format decodes the same mask; bad input fails naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dgseg.pipeline.data.coco import DataError, decode_segmentation, instance_masks, load_coco, load_image_list
from PIL import Image
from pycocotools import mask as mask_utils


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _square_formats():
    m = np.zeros((10, 12), dtype=np.uint8)
    m[2:6, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    compressed = {"size": rle["size"], "counts": rle["counts"].decode()}
    # uncompressed RLE: column-major run lengths starting with zeros
    flat = m.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    uncompressed = {"size": [10, 12], "counts": runs}
    polygon = [[3.0, 2.0, 9.0, 2.0, 9.0, 6.0, 3.0, 6.0]]
    return m.astype(bool), compressed, uncompressed, polygon


def test_segmentation_formats():
    m, compressed, uncompressed, polygon = _square_formats()
    assert (decode_segmentation(compressed, 10, 12) == m).all()
    assert (decode_segmentation(uncompressed, 10, 12) == m).all()
    # polygons are rasterised by pycocotools: the same square up to its boundary
    assert (decode_segmentation(polygon, 10, 12) ^ m).sum() <= 12


def _dataset(tmp_path, anns, images=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (12, 10)).save(tmp_path / "img" / "a.png")
    images = images if images is not None else [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}]
    cats = [{"id": 7, "name": "x"}, {"id": 3, "name": "y"}]
    return _write(tmp_path / "ann.json", {"images": images, "annotations": anns, "categories": cats})


def test_crowd_kept_but_not_an_instance_and_labels_contiguous(tmp_path):
    m, compressed, uncompressed, polygon = _square_formats()
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "segmentation": compressed, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "segmentation": polygon, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 3, "segmentation": uncompressed, "iscrowd": 1},
    ]
    coco = load_coco(_dataset(tmp_path, anns), tmp_path / "img")
    assert coco.index_of == {3: 0, 7: 1}
    assert len(coco.anns_by_image[1]) == 3
    masks, labels = instance_masks(coco, coco.images[0])
    assert masks.shape == (2, 10, 12) and masks.dtype == bool
    assert labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("malformed", "malformed JSON"),
        ("unknown_image", "unknown image ids"),
        ("unknown_category", "unknown category"),
        ("missing_file", "image files are missing"),
        ("empty", "empty or missing 'images'"),
        ("absent", "file not found"),
    ],
)
def test_bad_input_names_the_file(tmp_path, case, expected):
    seg = {"size": [10, 12], "counts": [120]}
    if case == "malformed":
        path = tmp_path / "ann.json"
        path.write_text('{"images": [1, 2,')
    elif case == "unknown_image":
        path = _dataset(tmp_path, [{"id": 1, "image_id": 99, "category_id": 7, "segmentation": seg}])
    elif case == "unknown_category":
        path = _dataset(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg}])
    elif case == "missing_file":
        imgs = [{"id": 1, "file_name": "a.png", "height": 10, "width": 12},
                {"id": 2, "file_name": "gone.png", "height": 10, "width": 12}]  # fmt: skip
        path = _dataset(tmp_path, [], images=imgs)
    elif case == "empty":
        path = _dataset(tmp_path, [], images=[])
    else:
        path = tmp_path / "nothing.json"
    with pytest.raises(DataError, match=expected) as info:
        load_coco(path, tmp_path / "img")
    assert str(path) in str(info.value)
    if case == "missing_file":
        assert "gone.png" in str(info.value)


def test_image_list(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "a.png")
    good = _write(tmp_path / "u.json", {"images": [{"id": 5, "file_name": "a.png", "height": 4, "width": 4}]})
    assert load_image_list(good, tmp_path / "img")[0]["id"] == 5
    empty = _write(tmp_path / "e.json", {"images": []})
    with pytest.raises(DataError, match="empty"):
        load_image_list(empty)


# ---------------------------------------------------------------- paths and cache entries


def test_file_names_leading_outside_the_image_folder_are_refused(tmp_path):
    from dgseg.pipeline.data.dataset import InstanceDataset

    _dataset(tmp_path, [])
    Image.new("RGB", (12, 10)).save(tmp_path / "outside.png")
    (tmp_path / "img" / "link.png").symlink_to(tmp_path / "outside.png")
    for name, why in [("../outside.png", "contains '..'"), (str(tmp_path / "outside.png"), "absolute"),
                      ("link.png", "symlink")]:  # fmt: skip
        images = [{"id": 1, "file_name": "a.png", "height": 10, "width": 12},
                  {"id": 2, "file_name": name, "height": 10, "width": 12}]  # fmt: skip
        ann = _dataset(tmp_path, [], images)
        with pytest.raises(DataError, match=why) as err:
            load_coco(ann, tmp_path / "img")
        assert "ann.json: images[1] (id 2)" in str(err.value)
        with pytest.raises(DataError, match=why):
            load_image_list(ann, tmp_path / "img")
    ds = InstanceDataset(tmp_path / "img", ann, allow_symlinks=True)  # the explicit option lets a symlink out
    assert ds[1].image.shape == (3, 10, 12)


def test_dataset_refuses_cache_entries_of_other_files_with_the_same_ids(tmp_path):
    """A val JSON numbered like the train JSON: its entries would be the train images' depth."""
    from dgseg.depth_cache.config import CacheConfig, EstimatorConfig
    from dgseg.depth_cache.images import records_from_json
    from dgseg.depth_cache.precompute import run_precompute
    from dgseg.depth_cache.reader import open_cache
    from dgseg.pipeline.data.dataset import InstanceDataset
    from dgseg.pipeline.data.synthetic import generate_dataset

    root = tmp_path / "data"
    generate_dataset(root, num_train=4, num_val=4, size=32, seed=0)
    train_json, val_json = root / "annotations" / "train.json", root / "annotations" / "val.json"
    val = json.loads(val_json.read_text())
    offset = val["images"][0]["id"] - 1
    for r in val["images"]:
        r["id"] -= offset
    for a in val["annotations"]:
        a["image_id"] -= offset
    renumbered = _write(tmp_path / "val_renumbered.json", val)
    est = EstimatorConfig(name="files", depth_dir=str(root / "depth"), input_size=32)
    cache = CacheConfig(root=str(tmp_path / "cache"), levels=["depth_s8"], num_workers=0)
    run_precompute(records_from_json(train_json, root / "images" / "train"), est, cache, progress=False)
    reader = open_cache(cache.root, est, cache)
    InstanceDataset(root / "images" / "train", train_json, reader=reader)  # its own entries: fine
    with pytest.raises(DataError, match="not the files their depth cache entries were computed from") as err:
        InstanceDataset(root / "images" / "val", renumbered, reader=reader)
    assert "val_000000.png" in str(err.value) and "train_000000.png" in str(err.value)


def test_training_read_of_a_damaged_shard_names_the_cache_shard_image_and_the_fix(tmp_path):
    from dgseg.depth_cache.config import CacheConfig, EstimatorConfig
    from dgseg.depth_cache.images import records_from_json
    from dgseg.depth_cache.precompute import run_precompute
    from dgseg.depth_cache.reader import open_cache
    from dgseg.depth_cache.store import CacheError
    from dgseg.pipeline.data.dataset import InstanceDataset
    from dgseg.pipeline.data.synthetic import generate_dataset

    root = tmp_path / "data"
    generate_dataset(root, num_train=3, num_val=1, size=32, seed=0)
    train_json, images = root / "annotations" / "train.json", root / "images" / "train"
    est = EstimatorConfig(name="files", depth_dir=str(root / "depth"), input_size=32)
    cache = CacheConfig(root=str(tmp_path / "cache"), levels=["depth_s8"], num_workers=0)
    key = run_precompute(records_from_json(train_json, images), est, cache, progress=False).key
    shard = tmp_path / "cache" / key / "maps" / "depth" / "c" / "0" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-40])  # cut short, as a full disk or a killed copy leaves it
    ds = InstanceDataset(images, train_json, reader=open_cache(cache.root, est, cache))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)
    with pytest.raises(CacheError) as err:
        next(iter(loader))
    msg = str(err.value)
    assert key in msg and "shard 0" in msg and "image '1'" in msg and f"cache verify {key}" in msg
