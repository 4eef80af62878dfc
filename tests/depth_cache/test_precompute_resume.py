"""Precompute as a job: reuse, resume after a crash or a SIGKILL, bad input, extending a cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cache_helpers import SIZES, FakeEstimator, cache_cfg, fake_fields, make_images
from dgseg.depth_cache.catalog import verify_cache
from dgseg.depth_cache.images import ImageRecord, records_from_json
from dgseg.depth_cache.precompute import precompute
from dgseg.depth_cache.reader import CacheReader
from dgseg.depth_cache.runner import make_runner
from dgseg.depth_cache.store import CacheStore

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _run(records, cfg, estimator=None, **kw):
    est = estimator or FakeEstimator()
    runner = make_runner(est, cfg.depth_stride, 28, device="cpu", precision="fp32", batch_size=cfg.batch_size)
    return precompute(records, runner, fake_fields(), cfg, progress=False, **kw), est


def _records(tmp_path, sizes=SIZES, first_id=1):
    return records_from_json(make_images(tmp_path / "img", sizes, first_id=first_id), tmp_path / "img")


def _reference(tmp_path, records):
    cfg = cache_cfg(tmp_path / "reference")
    result, _ = _run(records, cfg)
    return CacheReader(cfg.root, result.key)


def _assert_same(reader, reference, ids):
    for i in ids:
        a, b = reader.get(i), reference.get(i)
        torch.testing.assert_close(a.depth, b.depth)
        for k in b.features:
            torch.testing.assert_close(a.features[k], b.features[k])


def test_second_run_with_same_settings_does_no_inference(tmp_path):
    records = _records(tmp_path)
    cfg = cache_cfg(tmp_path / "cache")
    first, est1 = _run(records, cfg)
    assert first.computed == len(records) and est1.calls == len(records)
    second, est2 = _run(records, cfg)
    assert est2.calls == 0 and second.computed == 0 and second.already_done == len(records)


def test_resume_after_crash_recomputes_only_unfinished(tmp_path):
    records = _records(tmp_path)  # 8 images, shards of 3: [3, 3, 2]
    cfg = cache_cfg(tmp_path / "cache", batch_size=3)
    with pytest.raises(RuntimeError, match="injected"):
        _run(records, cfg, FakeEstimator(fail_after=4))  # dies inside the second shard
    reader = CacheReader(cfg.root, next(p.name for p in Path(cfg.root).iterdir()))
    finished = reader.ids()
    assert len(finished) == 3  # exactly the first shard; nothing of the second is visible
    store = CacheStore(cfg.root, reader.key)
    assert sorted(store.read_markers()) == [0]
    result, est = _run(records, cfg)
    assert est.calls == len(records) - 3 and result.already_done == 3
    assert verify_cache(cfg.root, reader.key, progress=False).ok
    _assert_same(CacheReader(cfg.root, reader.key), _reference(tmp_path, records), [r.id for r in records])


def test_half_written_shard_is_never_read_and_is_rewritten(tmp_path):
    records = _records(tmp_path)
    cfg = cache_cfg(tmp_path / "cache")
    with pytest.raises(RuntimeError):
        _run(records, cfg, FakeEstimator(fail_after=3))
    key = next(p.name for p in Path(cfg.root).iterdir())
    # a kill in the middle of writing shard 1: its files exist (garbage), its marker does not
    for name in ["depth", "path_4", "path_3"]:
        f = Path(cfg.root) / key / "maps" / name / "c" / "1" / "0" / "0" / "0"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(os.urandom(500))
    reader = CacheReader(cfg.root, key)
    assert len(reader) == 3 and reader.missing([r.id for r in records[3:6]]) == [r.id for r in records[3:6]]
    result, est = _run(records, cfg)
    assert est.calls == 5 and 1 in result.shards
    assert verify_cache(cfg.root, key, progress=False).ok
    _assert_same(CacheReader(cfg.root, key), _reference(tmp_path, records), [r.id for r in records])


KILL_SCRIPT = """
import sys, json
sys.path[:0] = [{repo!r}, {here!r}]
from cache_helpers import FakeEstimator, cache_cfg, fake_fields
from dgseg.depth_cache.images import records_from_json
from dgseg.depth_cache.precompute import precompute
from dgseg.depth_cache.runner import make_runner
records = records_from_json({json!r}, {img!r})
cfg = cache_cfg({root!r}, shard_size=2, batch_size=1)
runner = make_runner(FakeEstimator(delay=0.25), 2, 28, device="cpu", precision="fp32", batch_size=1)
precompute(records, runner, fake_fields(), cfg, progress=False)
"""


def test_sigkill_midway_then_rerun_recomputes_nothing_finished(tmp_path):
    sizes = SIZES * 2  # 16 images, 8 shards of 2, 0.25 s per image: ~4 s of work
    json_path = make_images(tmp_path / "img", sizes)
    root = tmp_path / "cache"
    script = KILL_SCRIPT.format(repo=str(REPO), here=str(HERE), json=str(json_path), img=str(tmp_path / "img"),
                                root=str(root))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            markers = list(root.glob("*/shards/*.json"))
            if len(markers) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"job ended before it could be killed: {proc.stdout.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    key = next(p.name for p in root.iterdir())
    done_before = CacheReader(str(root), key).ids()
    assert 4 <= len(done_before) < len(sizes)
    records = records_from_json(json_path, tmp_path / "img")
    result, est = _run(records, cache_cfg(root, shard_size=2))
    assert est.calls == len(sizes) - len(done_before)  # nothing finished was recomputed
    assert verify_cache(str(root), key, progress=False).ok
    assert len(CacheReader(str(root), key)) == len(sizes)
    _assert_same(CacheReader(str(root), key), _reference(tmp_path, records), [r.id for r in records])


def test_corrupt_image_is_reported_and_skipped(tmp_path):
    records = _records(tmp_path)
    bad = Path(records[4].path)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))  # a PNG header, then garbage
    missing = ImageRecord("404", str(tmp_path / "img" / "gone.png"), (10, 10))
    cfg = cache_cfg(tmp_path / "cache")
    result, est = _run([*records, missing], cfg)
    assert set(result.failed) == {records[4].id, "404"} and "cannot decode" in result.failed[records[4].id]
    assert est.calls == len(records) - 1
    report = json.loads((Path(cfg.root) / result.key / "report.json").read_text())
    assert set(report["failed"]) == {records[4].id, "404"} and str(bad) in report["failed"][records[4].id]
    assert report["images"] == len(records) - 1
    assert verify_cache(cfg.root, result.key, progress=False).ok
    again, est2 = _run([*records, missing], cfg)  # failed before: skipped unless asked
    assert est2.calls == 0 and again.skipped_failed == 2
    retried, _ = _run([*records, missing], cfg, retry_failed=True)
    assert set(retried.failed) == {records[4].id, "404"}


def test_adding_images_later_extends_the_cache_with_new_shards(tmp_path):
    first = _records(tmp_path, SIZES[:4])
    cfg = cache_cfg(tmp_path / "cache")
    r1, _ = _run(first, cfg)
    more = _records(tmp_path, SIZES[4:], first_id=100)
    r2, est = _run(first + more, cfg)
    assert est.calls == len(more) and set(r2.shards).isdisjoint(r1.shards)
    reader = CacheReader(cfg.root, r1.key)
    assert sorted(reader.ids()) == sorted(r.id for r in first + more)
    assert verify_cache(cfg.root, r1.key, progress=False).ok


def test_mismatched_weights_fail_before_any_work(tmp_path):
    from dgseg.depth_cache.config import EstimatorConfig
    from dgseg.depth_cache.precompute import run_precompute

    records = _records(tmp_path, SIZES[:2])
    weights = tmp_path / "depth_anything_v2_vits.pth"
    torch.save({"pretrained.cls_token": torch.zeros(1, 1, 384), "unrelated.weight": torch.zeros(3)}, weights)
    est = EstimatorConfig(name="depth-anything-v2-vits", weights=str(weights), device="cpu")
    with pytest.raises(ValueError, match="unrelated.weight|missing"):
        run_precompute(records, est, cache_cfg(tmp_path / "cache"), progress=False)
    assert not (tmp_path / "cache").exists()  # nothing was created, nothing computed
