"""Shared helpers of the depth-cache tests: a small fake estimator and generated images.

Not a test module (no `test_` prefix); the tests import it by name (pytest puts this folder on
sys.path), and subprocess tests put this folder on PYTHONPATH.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from dgseg.depth_cache.config import CacheConfig
from dgseg.depth_cache.estimators.base import DepthEstimator, DepthOutput, FeatureInfo, Preprocess
from PIL import Image
from torch import nn

# sizes (H, W): landscape, portrait, odd, square, and one too wide for the 2:1 canvas
SIZES = [(40, 60), (60, 40), (33, 47), (50, 50), (20, 90), (45, 30), (28, 28), (64, 48)]


class FakeEstimator(DepthEstimator):
    """DPT-shaped outputs from a fixed 1x1 conv: depth (B, H, W), path_4 at /14, path_3 at /7.

    Counts the images it sees; `fail_after` raises once more images than that were requested."""

    def __init__(self, channels: int = 4, input_size: int = 28, fail_after: int | None = None, delay: float = 0.0):
        super().__init__()
        self.name = "fake"
        self.preprocess = Preprocess(input_size=input_size, multiple_of=14)
        self.feature_info = [FeatureInfo("path_4", channels, 14), FeatureInfo("path_3", channels, 7)]
        self.conv = nn.Conv2d(3, channels, 1)
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g))
        self.calls, self.fail_after, self.delay = 0, fail_after, delay

    def forward(self, x: torch.Tensor) -> DepthOutput:
        if self.fail_after is not None and self.calls + x.shape[0] > self.fail_after:
            raise RuntimeError("injected failure")
        if self.delay:
            import time

            time.sleep(self.delay * x.shape[0])
        self.calls += x.shape[0]
        depth = 2.0 + x[:, 0] - 0.5 * x[:, 1]
        f = self.conv(x)
        return DepthOutput(depth, {"path_4": F.avg_pool2d(f, 14), "path_3": F.avg_pool2d(f, 7)})


FAKE_FIELDS = {"format_version": 1, "estimator": "fake", "input_size": 28, "levels": ["path_4", "path_3"]}


def fake_fields(**changes) -> dict:
    return {**FAKE_FIELDS, **changes}


def cache_cfg(root: str, **kw) -> CacheConfig:
    base = dict(root=str(root), levels=["path_4", "path_3"], dtype="fp16", depth_stride=2, shard_size=3,
                batch_size=2, num_workers=0)  # fmt: skip
    base.update(kw)
    return CacheConfig(**base)


def make_images(folder: Path, sizes=SIZES, first_id: int = 1, seed: int = 0) -> Path:
    """PNG images of `sizes` plus a COCO-style JSON (`images` only); returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1) * 200
        arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        name = f"img_{first_id + i:04d}.png"
        Image.fromarray(arr).save(folder / name)
        images.append({"id": first_id + i, "file_name": name, "height": h, "width": w})
    path = folder / f"images_{first_id}.json"
    path.write_text(json.dumps({"images": images}))
    return path
