"""Precompute's progress bar counts images as the estimator finishes them, not whole shards."""

from __future__ import annotations

import dgseg.depth_cache.precompute as precompute_module
from cache_helpers import SIZES, FakeEstimator, cache_cfg, fake_fields, make_images
from dgseg.depth_cache.images import records_from_json
from dgseg.depth_cache.runner import make_runner


class RecordingBar:
    updates: list[int] = []

    def __init__(self, total=None, **kw) -> None:
        self.total = total

    def update(self, n: int = 1) -> None:
        RecordingBar.updates.append(n)

    def close(self) -> None:
        pass


def test_bar_moves_per_batch_within_a_shard(tmp_path, monkeypatch):
    RecordingBar.updates = []
    monkeypatch.setattr(precompute_module, "tqdm", RecordingBar)
    records = records_from_json(make_images(tmp_path / "img", SIZES), tmp_path / "img")
    cfg = cache_cfg(tmp_path / "c", shard_size=4, batch_size=1)
    runner = make_runner(FakeEstimator(), cfg.depth_stride, 28, device="cpu", precision="fp32", batch_size=1)
    result = precompute_module.precompute(records, runner, fake_fields(), cfg, progress=True)
    assert result.computed == len(SIZES) == 8
    # two shards of four, one image per forward: the bar steps image by image, not 4 + 4
    assert sum(RecordingBar.updates) == 8
    assert max(RecordingBar.updates) == 1 and len(RecordingBar.updates) == 8


def test_flip_views_count_each_image_once(tmp_path, monkeypatch):
    RecordingBar.updates = []
    monkeypatch.setattr(precompute_module, "tqdm", RecordingBar)
    records = records_from_json(make_images(tmp_path / "img", SIZES[:4]), tmp_path / "img")
    cfg = cache_cfg(tmp_path / "c", shard_size=4, batch_size=2, flip_views=True)
    runner = make_runner(FakeEstimator(), cfg.depth_stride, 28, device="cpu", precision="fp32", batch_size=2)
    fields = fake_fields(flip_views=True)
    precompute_module.precompute(records, runner, fields, cfg, progress=True)
    assert runner.calls == 8  # the plain and the mirrored view of each image
    assert sum(RecordingBar.updates) == 4 and len(RecordingBar.updates) > 1
