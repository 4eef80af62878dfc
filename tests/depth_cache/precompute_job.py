"""One independent precompute job on a shared cache, for the concurrency tests (not a test module).

`python precompute_job.py JSON IMAGE_DIR ROOT GO_FILE DELAY LEASE_S`: waits until GO_FILE exists
(so that two jobs start together), runs `precompute` with the counting FakeEstimator (DELAY seconds
per image), and prints one JSON line: computed, calls (images through the estimator), shards.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from cache_helpers import FakeEstimator, cache_cfg, fake_fields
from dgseg.depth_cache.images import records_from_json
from dgseg.depth_cache.precompute import precompute
from dgseg.depth_cache.runner import make_runner


def main() -> None:
    ann, img_dir, root, go, delay, lease = sys.argv[1:7]
    records = records_from_json(ann, img_dir)
    cfg = cache_cfg(root, lease_s=float(lease))
    est = FakeEstimator(delay=float(delay))
    runner = make_runner(est, cfg.depth_stride, 28, device="cpu", precision="fp32", batch_size=cfg.batch_size)
    print("ready", flush=True)
    while not Path(go).exists():
        time.sleep(0.01)
    result = precompute(records, runner, fake_fields(), cfg, progress=False)
    print(json.dumps({"computed": result.computed, "calls": est.calls, "shards": result.shards}), flush=True)


if __name__ == "__main__":
    main()
