"""The `files` source: maps on disk -> normalised depth (1 = nearest) and an average-pooled pyramid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dgseg.depth_cache.config import CacheConfig, EstimatorConfig
from dgseg.depth_cache.estimators import BUILDERS, build_source
from dgseg.depth_cache.estimators.files import FilesDepth
from dgseg.depth_cache.images import ImageRecord
from dgseg.depth_cache.precompute import run_precompute
from dgseg.depth_cache.reader import open_cache
from PIL import Image


def _known_depth() -> np.ndarray:
    """16x24 metric depth in mm: a far background (8 m) and a near square (2 m) plus a gentle ramp."""
    d = np.full((16, 24), 8000.0) + np.arange(24)[None, :] * 10.0
    d[4:12, 8:16] = 2000.0
    return d


def _normalised(inv: np.ndarray) -> np.ndarray:
    lo, hi = np.quantile(inv, [0.02, 0.98])
    return (np.clip(inv, lo, hi) - lo) / (hi - lo)


def test_pyramid_is_block_mean_of_normalised_inverse_depth(tmp_path):
    d = _known_depth()
    Image.fromarray(d.astype(np.uint16)).save(tmp_path / "scene.png")  # 16-bit PNG
    src = FilesDepth(tmp_path, "depth", ["depth_s2", "depth_s8"])
    out = src(src.load("scene"))
    want = _normalised(1.0 / d)
    np.testing.assert_allclose(out.depth[0].numpy(), want, atol=1e-5)
    assert out.depth[0, 8, 12] == pytest.approx(1.0)  # the near square is nearest
    for k in (2, 8):
        blocks = want.reshape(16 // k, k, 24 // k, k).mean(axis=(1, 3))
        got = out.features[f"depth_s{k}"]
        assert got.shape == (1, 1, 16 // k, 24 // k)
        np.testing.assert_allclose(got[0, 0].numpy(), blocks, atol=1e-5)


def test_disparity_is_not_inverted_and_invalid_pixels_are_far(tmp_path):
    disp = np.linspace(1.0, 5.0, 20 * 20, dtype=np.float32).reshape(20, 20)
    disp[0, :5] = 0.0  # no measurement
    np.save(tmp_path / "a.npy", disp)
    src = FilesDepth(tmp_path, "disparity", ["depth_s4"])
    depth = src(src.load("a")).depth[0]
    assert float(depth[-1, -1]) == pytest.approx(1.0)  # largest disparity = nearest
    assert torch.all(depth[0, :5] == depth.min())  # invalid -> farthest
    resized = src.load("a", size=(40, 30))  # an image of another size: the map follows it
    assert resized.shape == (40, 30)


def test_bad_levels_and_missing_maps_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="depth_s<stride>"):
        FilesDepth(tmp_path, "depth", ["path_4"])
    src = FilesDepth(tmp_path, "depth", ["depth_s8"])
    with pytest.raises(FileNotFoundError, match="nothere"):
        src.load("nothere")
    np.save(tmp_path / "zeros.npy", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="no valid"):
        src(src.load("zeros"))


def test_registry_builds_by_name_and_lists_valid_names(tmp_path):
    assert {"tiny", "files", "depth-anything-v2-vits", "depth-anything-v2-vitl"} <= set(BUILDERS)
    src = build_source(EstimatorConfig(name="files", depth_dir=str(tmp_path)), ["depth_s8", "depth_s16"])
    assert [fi.name for fi in src.feature_info] == ["depth_s8", "depth_s16"]
    with pytest.raises(ValueError, match="valid: .*tiny.*files"):
        build_source(EstimatorConfig(name="midas"), ["path_4"])


def test_files_cache_through_precompute_and_open_cache(tmp_path):
    depth_dir, img_dir = tmp_path / "depth", tmp_path / "img"
    depth_dir.mkdir()
    img_dir.mkdir()
    d = _known_depth()
    records = []
    for i, arr in enumerate([d, d.T.copy()]):  # landscape and portrait
        Image.fromarray(arr.astype(np.uint16)).save(depth_dir / f"s{i}.png")
        Image.fromarray(np.zeros((*arr.shape, 3), np.uint8)).save(img_dir / f"s{i}.png")
        records.append(ImageRecord(str(i), str(img_dir / f"s{i}.png"), arr.shape))
    est = EstimatorConfig(name="files", depth_dir=str(depth_dir), input_size=16)
    cache = CacheConfig(root=str(tmp_path / "caches"), levels=["depth_s2", "depth_s8"], depth_stride=2, num_workers=0)
    run_precompute(records, est, cache, progress=False)
    reader = open_cache(cache.root, est, cache)
    want = _normalised(1.0 / d)
    land, port = reader.get("0"), reader.get("1")
    assert land.orig_size == (16, 24) and port.orig_size == (24, 16)
    np.testing.assert_allclose(land.features["depth_s2"][0].numpy(), want.reshape(8, 2, 12, 2).mean((1, 3)), atol=1e-3)
    np.testing.assert_allclose(port.features["depth_s8"][0].numpy(), want.reshape(2, 8, 3, 8).mean((1, 3)).T, atol=1e-3)
    assert land.depth.shape == (1, 8, 12)
