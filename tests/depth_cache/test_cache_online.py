"""Online depth (stage two's `online` mode) gives what the cache reader gives for the same image."""

from __future__ import annotations

import pytest
import torch
from cache_helpers import FakeEstimator, cache_cfg, fake_fields, make_images
from dgseg.depth_cache.estimators.files import FilesDepth
from dgseg.depth_cache.images import decode_image, records_from_json
from dgseg.depth_cache.online import OnlineDepth
from dgseg.depth_cache.precompute import precompute
from dgseg.depth_cache.reader import CacheReader
from dgseg.depth_cache.runner import make_runner


def test_online_entries_match_cached_entries(tmp_path):
    sizes = [(40, 60), (40, 60), (60, 40)]
    records = records_from_json(make_images(tmp_path / "img", sizes), tmp_path / "img")
    cfg = cache_cfg(tmp_path / "cache")
    est = FakeEstimator()
    runner = make_runner(est, cfg.depth_stride, 28, device="cpu", precision="fp32")
    reader = CacheReader(cfg.root, precompute(records, runner, fake_fields(), cfg, progress=False).key)
    online = OnlineDepth(est, depth_stride=cfg.depth_stride, precision="fp32")
    batch = torch.stack([decode_image(r.path).float() / 255 for r in records[:2]])  # (2, 3, 40, 60) in [0, 1]
    portrait = decode_image(records[2].path)[None].float() / 255
    for rec, entry in zip(records, online(batch) + online(portrait), strict=True):
        cached = reader.get(rec.id)
        assert entry.orig_size == cached.orig_size
        torch.testing.assert_close(entry.depth, cached.depth, atol=2e-3, rtol=2e-3)
        for name in ("path_4", "path_3"):
            torch.testing.assert_close(entry.features[name], cached.features[name], atol=2e-3, rtol=2e-3)


def test_online_normalisation_ignores_padding(tmp_path):
    est = FakeEstimator()
    online = OnlineDepth(est, depth_stride=1, precision="fp32")
    img = torch.rand(1, 3, 28, 28)
    padded = torch.zeros(1, 3, 28, 56)
    padded[..., :28] = img
    valid = torch.zeros(1, 28, 56, dtype=torch.bool)
    valid[..., :28] = True
    alone, inside = online(img)[0], online(padded, valid)[0]
    torch.testing.assert_close(inside.depth[..., :28], alone.depth, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="network"):
        OnlineDepth(FilesDepth(tmp_path, "depth", ["depth_s8"]))
