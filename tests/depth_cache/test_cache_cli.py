"""The stage-one commands end to end: precompute-depth, cache ls / info / verify / export."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from dgseg import cli
from dgseg.depth_cache.export import read_hdf5_entry
from dgseg.depth_cache.reader import CacheReader
from PIL import Image


@pytest.fixture
def files_dataset(tmp_path):
    """6 images with 16-bit depth PNGs (mm, far = large) and a COCO-style JSON."""
    img_dir, depth_dir = tmp_path / "images", tmp_path / "depth"
    img_dir.mkdir()
    depth_dir.mkdir()
    rng = np.random.default_rng(0)
    images = []
    for i, (h, w) in enumerate([(32, 48), (48, 32), (40, 40), (24, 64), (32, 48), (30, 45)]):
        depth = 3000 + rng.integers(0, 4000, (h, w))
        Image.fromarray(depth.astype(np.uint16)).save(depth_dir / f"im{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img_dir / f"im{i}.png")
        images.append({"id": 10 + i, "file_name": f"im{i}.png", "height": h, "width": w})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return ann, img_dir, depth_dir


def _invoke(args):
    result = CliRunner().invoke(cli.main, args, catch_exceptions=False)
    return result.exit_code, result.output


def test_precompute_then_ls_info_verify_export(tmp_path, files_dataset):
    root, key, args = _precompute_files(tmp_path, files_dataset, "depth.cache.levels=[depth_s8,depth_s16]",
                                        "depth.cache.shard_size=4")  # fmt: skip
    code, out = _invoke(args)  # reuse
    assert code == 0 and "0 computed" in out and "6 already there" in out

    code, out = _invoke(["cache", "ls", "--root", root])
    assert code == 0 and key in out and "6 images" in out
    code, out = _invoke(["cache", "info", key, "--root", root])
    assert code == 0 and "depth_s8" in out and "depth_s16" in out and "images 6 in 2 shards" in out
    code, out = _invoke(["cache", "verify", key, "--root", root, "--quiet"])
    assert code == 0 and out.strip().endswith("6 images in 2 shards, 0 problems")

    h5 = tmp_path / "cache.h5"
    code, out = _invoke(["cache", "export", key, "--format", "hdf5", "--out", str(h5), "--root", root])
    assert code == 0 and "wrote 6 images" in out
    reader = CacheReader(root, key)
    with h5py.File(h5) as f:
        assert sorted(x.decode() for x in f["ids"][:]) == sorted(reader.ids())
    for image_id in reader.ids():
        entry, exported = reader.get(image_id), read_hdf5_entry(h5, image_id)
        torch.testing.assert_close(torch.from_numpy(exported["depth"]), entry.depth)
        torch.testing.assert_close(torch.from_numpy(exported["depth_s8"]), entry.features["depth_s8"])


def _precompute_files(tmp_path, files_dataset, *settings):
    ann, img_dir, depth_dir = files_dataset
    root = str(tmp_path / "caches")
    args = ["precompute-depth", "--coco", str(ann), "--image-dir", str(img_dir), "--estimator", "files",
            "--depth-dir", str(depth_dir), "--root", root, "--quiet", "depth.estimator.input_size=32",
            "depth.cache.num_workers=0", *settings]  # fmt: skip
    code, out = _invoke(args)
    assert code == 0, out
    return root, out.split()[1], args


@pytest.mark.parametrize("damage", ["changed value", "truncated file"])
def test_verify_detects_a_damaged_shard(tmp_path, files_dataset, damage):
    root, key, _ = _precompute_files(tmp_path, files_dataset, "depth.cache.levels=[depth_s8]")
    if damage == "changed value":  # valid zarr data, but not what was written: only the checksum can tell
        arr = zarr.open_array(store=str(Path(root) / key / "maps" / "depth_s8"), mode="r+")
        arr[0] = np.asarray(arr[0]) + np.float16(0.25)
    else:
        shard = Path(root) / key / "maps" / "depth_s8" / "c" / "0" / "0" / "0" / "0"
        shard.write_bytes(shard.read_bytes()[:-40])
    code, out = _invoke(["cache", "verify", key, "--root", root, "--quiet"])
    assert code == 1 and "FAILED" in out
    assert ("checksum of maps/depth_s8" in out) if damage == "changed value" else ("unreadable" in out)


def test_unknown_estimator_fails_cleanly_listing_valid_names(tmp_path, files_dataset):
    ann, img_dir, _ = files_dataset
    args = ["precompute-depth", "--coco", str(ann), "--image-dir", str(img_dir), "--estimator", "midas",
            "--root", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code != 0
    assert "unknown estimator 'midas'" in result.output and "tiny" in result.output


def test_precompute_from_a_config_names_its_missing_data_files(tmp_path, files_dataset):
    ann, img_dir, depth_dir = files_dataset
    missing = tmp_path / "splits" / "train_5pct_seed0_labeled.json"
    args = ["precompute-depth", "--estimator", "files", "--depth-dir", str(depth_dir), "--root", str(tmp_path / "c"),
            f"data.train_json={missing}", f"data.image_dir={img_dir}", "data.unlabeled_list=null",
            f"data.val_json={ann}", f"data.val_image_dir={img_dir}", "depth.estimator.input_size=32"]  # fmt: skip
    result = CliRunner().invoke(cli.main, args)
    # the val file exists: precomputing it alone would leave training without its cache entries
    assert result.exit_code != 0
    assert str(missing) in result.output and "do not exist" in result.output
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
