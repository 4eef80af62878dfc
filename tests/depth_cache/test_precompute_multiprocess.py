"""`torchrun --nproc-per-node 2 cli.py precompute-depth`: shards split between processes, one cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from cache_helpers import SIZES, make_images
from dgseg.depth_cache.catalog import verify_cache
from dgseg.depth_cache.config import CacheConfig, EstimatorConfig
from dgseg.depth_cache.images import records_from_json
from dgseg.depth_cache.precompute import run_precompute
from dgseg.depth_cache.reader import CacheReader, open_cache

REPO = Path(__file__).resolve().parents[2]
SETTINGS = ["depth.estimator.input_size=28", "depth.estimator.device=cpu", "depth.cache.shard_size=2",
            "depth.cache.num_workers=0", "depth.cache.levels=[path_4]"]  # fmt: skip


def test_two_processes_write_disjoint_shards_into_one_valid_cache(tmp_path):
    sizes = SIZES + SIZES[:3]  # 11 images -> 6 shards of 2 (the last one partial)
    ann = make_images(tmp_path / "img", sizes)
    root = tmp_path / "caches"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "cli.py",
           "precompute-depth", "--coco", str(ann), "--image-dir", str(tmp_path / "img"), "--estimator", "tiny",
           "--root", str(root), "--quiet", *SETTINGS]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    (key,) = [p.name for p in root.iterdir()]  # one cache
    markers = {int(p.stem): json.loads(p.read_text()) for p in (root / key / "shards").glob("*.json")}
    assert sorted(markers) == list(range(6))
    assert {m["rank"] for m in markers.values()} == {0, 1}
    assert not list((root / key / "claims").glob("*.json"))  # every claim given back after its shard
    ids = [i for m in markers.values() for i, _, _ in m["images"]]
    assert sorted(ids) == sorted(str(i + 1) for i in range(len(sizes))) and len(set(ids)) == len(ids)
    assert verify_cache(str(root), key, progress=False).ok

    # the same settings in one process give the same cache key and the same values
    records = records_from_json(ann, tmp_path / "img")
    est = EstimatorConfig(name="tiny", input_size=28, device="cpu")
    cache = CacheConfig(root=str(tmp_path / "single"), levels=["path_4"], shard_size=2, num_workers=0)
    single = run_precompute(records, est, cache, progress=False)
    assert single.key == key
    both, one = open_cache(str(root), est, cache), CacheReader(cache.root, key)
    for r in records:
        torch.testing.assert_close(both.get(r.id).features["path_4"], one.get(r.id).features["path_4"],
                                   rtol=1e-3, atol=1e-3)  # fmt: skip
