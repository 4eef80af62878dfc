"""Mask2Former's sizes: the test-time long-side cap and rectangular (Cityscapes) training crops."""

from __future__ import annotations

from pathlib import Path

import torch
from dgseg.pipeline.config.loading import load_config
from dgseg.pipeline.data.dataset import train_canvas
from dgseg.pipeline.data.sample import new_sample
from dgseg.pipeline.data.transforms import build_test_transforms, build_train_transforms

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _sample(h: int, w: int):
    masks = torch.zeros(1, h, w, dtype=torch.bool)
    masks[0, : h // 2, : w // 2] = True
    return new_sample(torch.rand(3, h, w), masks, torch.tensor([0]), depth=torch.rand(1, h, w), image_id="1")


def test_test_resize_caps_the_long_side():
    t = build_test_transforms(80, feature_stride=8, max_size=133)
    assert t(_sample(48, 64)).size == (80, 107)  # 4:3 stays under the cap: short side 80
    assert t(_sample(40, 120)).size == (44, 133)  # 3:1 would be 80 x 240: capped to a long side of 133
    assert build_test_transforms(80, feature_stride=8)(_sample(40, 120)).size == (80, 240)  # no cap


def test_rectangular_training_canvas():
    t = build_train_transforms((32, 64), 0.5, 2.0, hflip=True, feature_stride=8)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        out = t(_sample(64, 128), g)
        assert out.size == (32, 64) and out.depth.shape[-2:] == (32, 64) and out.valid.shape == (32, 64)


def test_paper_configs_use_mask2formers_sizes():
    coco, city = load_config(CONFIGS / "coco_5pct.yaml"), load_config(CONFIGS / "cityscapes_10pct.yaml")
    assert (coco.data.test_size, coco.data.test_max_size) == (800, 1333)
    assert train_canvas(coco.data) == (1024, 1024)
    assert train_canvas(city.data) == (512, 1024)
    assert (city.data.test_size, city.data.test_max_size) == (1024, 2048)
    # LSJ's s scales the image to fit (s*512, s*1024): a 1024x2048 frame's short side goes 512..2048
    assert (city.data.min_scale * 512, city.data.max_scale * 512) == (512, 2048)
