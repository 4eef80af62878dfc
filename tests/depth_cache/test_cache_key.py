"""The cache key covers what produced a cache; training refuses a cache made with other settings."""

from __future__ import annotations

import dataclasses

import pytest
from cache_helpers import make_images
from dgseg.depth_cache.config import CacheConfig, EstimatorConfig
from dgseg.depth_cache.images import records_from_json
from dgseg.depth_cache.key import cache_key, key_fields
from dgseg.depth_cache.precompute import run_precompute
from dgseg.depth_cache.reader import CacheKeyMismatchError, open_cache


def _tiny(**kw) -> EstimatorConfig:
    return EstimatorConfig(name="tiny", input_size=28, device="cpu", **kw)


def _cache(root, **kw) -> CacheConfig:
    return CacheConfig(root=str(root), levels=["path_4"], depth_stride=4, shard_size=4, num_workers=0, **kw)


def test_every_setting_that_changes_values_changes_the_key(tmp_path):
    est, cache = _tiny(), _cache(tmp_path)
    base = cache_key(key_fields(est, cache))
    variants = [
        (dataclasses.replace(est, seed=1), cache),
        (dataclasses.replace(est, input_size=42), cache),
        (est, dataclasses.replace(cache, levels=["path_4", "path_3"])),
        (est, dataclasses.replace(cache, dtype="int8")),
        (est, dataclasses.replace(cache, depth_stride=2)),
        (est, dataclasses.replace(cache, decode="nvjpeg")),  # other pixels than the host decoders
    ]
    keys = {cache_key(key_fields(e, c)) for e, c in variants}
    assert base not in keys and len(keys) == len(variants)
    # storage details that change no stored value share the key
    same = dataclasses.replace(cache, shard_size=64, batch_size=2, num_workers=3, root=str(tmp_path / "other"))
    assert cache_key(key_fields(est, same)) == base
    assert cache_key(key_fields(dataclasses.replace(est, precision="bf16", device="cuda"), cache)) == base
    # torchvision and PIL decode JPEGs to the same pixels on every host: one key, whatever the device
    assert cache_key(key_fields(est, dataclasses.replace(cache, decode="pil"))) == base


def test_weights_file_content_is_keyed(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights two")
    cfg = _cache(tmp_path)
    key_a = cache_key(key_fields(EstimatorConfig(name="depth-anything-v2-vits", weights=str(a)), cfg))
    key_b = cache_key(key_fields(EstimatorConfig(name="depth-anything-v2-vits", weights=str(b)), cfg))
    assert key_a != key_b and key_a.startswith("depth-anything-v2-vits-")
    with pytest.raises(ValueError, match="needs a weights file"):
        key_fields(EstimatorConfig(name="depth-anything-v2-vits"), cfg)


def test_open_cache_accepts_matching_and_refuses_mismatch_naming_fields(tmp_path):
    records = records_from_json(make_images(tmp_path / "img", [(30, 40), (40, 30), (28, 28)]), tmp_path / "img")
    est, cache = _tiny(), _cache(tmp_path / "caches")
    result = run_precompute(records, est, cache, progress=False)
    reader = open_cache(cache.root, est, cache)
    assert reader.key == result.key and sorted(reader.ids()) == sorted(r.id for r in records)
    assert reader.get(records[0].id).features["path_4"].shape == (16, 2, 3)  # 30x40 -> 28x42 input

    with pytest.raises(CacheKeyMismatchError) as info:
        open_cache(cache.root, est, dataclasses.replace(cache, levels=["path_4", "path_3"], dtype="int8"))
    msg = str(info.value)
    assert result.key in msg and "levels" in msg and "dtype" in msg and "'int8'" in msg
    assert "input_size" not in msg  # only the fields that differ
    with pytest.raises(CacheKeyMismatchError, match="seed|weights"):
        open_cache(cache.root, dataclasses.replace(est, seed=3), cache)
    with pytest.raises(CacheKeyMismatchError, match="holds no cache"):
        open_cache(str(tmp_path / "empty"), est, cache)
