"""Collate: padding to a multiple of 32, features padded on the padded image's grid, clear mismatches."""

from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.data.coco import DataError
from dgseg.pipeline.data.collate import collate
from dgseg.pipeline.data.sample import new_sample
from dgseg.pipeline.data.transforms import build_test_transforms


def _sample(h, w, n=2, depth=True, image_id="1"):
    image = torch.rand(3, h, w)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    masks[:, : h // 2] = True
    feats = {"p": torch.rand(5, 7, 9)}
    s = new_sample(image, masks, torch.arange(n), depth=torch.rand(1, 11, 13) if depth else None, features=feats,
                   image_id=image_id)  # fmt: skip
    return s


def test_pads_mixed_sizes():
    t = build_test_transforms(50, 8)
    a, b = t(_sample(60, 80, image_id="a")), t(_sample(80, 60, n=0, image_id="b"))
    assert a.size == (50, 67) and a.features["p"].shape == (5, 7, 9)
    batch = collate([a, b])
    assert batch.images.shape == (2, 3, 96, 96)
    assert batch.valid[0, :50, :67].all() and batch.valid[0].sum() == 50 * 67
    assert (batch.images[0, :, 50:] == 0).all() and (batch.depth[0, :, :, 67:] == 0).all()
    assert batch.features["p"].shape == (2, 5, 12, 12)
    assert torch.equal(batch.features["p"][0, :, :7, :9], a.features["p"])
    assert batch.targets[0]["masks"].shape == (2, 96, 96) and batch.targets[1]["masks"].shape == (0, 96, 96)
    assert batch.image_ids == ["a", "b"] and batch.orig_sizes == [(60, 80), (80, 60)]
    assert len(batch) == 2


def test_mismatches_raise():
    t = build_test_transforms(48, 8)
    with pytest.raises(DataError, match="some samples have depth"):
        collate([t(_sample(48, 48)), t(_sample(48, 48, depth=False))])
    with pytest.raises(DataError, match="MatchResolution"):
        collate([_sample(48, 48)])  # maps still at the cache's resolution
    with pytest.raises(ValueError, match="empty"):
        collate([])
