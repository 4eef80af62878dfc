"""Flipped views from a flip_views cache: HFlip swaps them in as they are, every other transform refuses them."""

from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.data.collate import collate
from dgseg.pipeline.data.sample import has_flip_view, new_sample
from dgseg.pipeline.data.transforms import (
    DropFlipView,
    HFlip,
    LargeScaleJitter,
    MatchResolution,
    Resize,
    ResizeShortSide,
    build_test_transforms,
    build_train_transforms,
    flip,
)


def _sample(with_flip: bool = True, offset: float = 0.0):
    """Random maps; the 'mirrored image's maps' are unrelated random maps unless `offset` makes them the
    mirrored plain maps plus a constant (so a test can tell which view a pipeline used)."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 30, 40, generator=g)
    masks = torch.rand(2, 30, 40, generator=g) > 0.5
    depth = torch.rand(1, 23, 31, generator=g)
    features = {"path_4": torch.rand(4, 3, 4, generator=g), "path_3": torch.rand(4, 5, 7, generator=g)}
    kw = {}
    if with_flip:
        if offset:
            kw = dict(depth_flip=depth.flip(-1) + offset, features_flip={k: v.flip(-1) + 2 * offset
                                                                          for k, v in features.items()})  # fmt: skip
        else:
            kw = dict(depth_flip=torch.rand(1, 23, 31, generator=g),
                      features_flip={k: torch.rand(v.shape, generator=g) for k, v in features.items()})  # fmt: skip
    return new_sample(image, masks, torch.tensor([0, 1]), depth=depth, features=features, image_id="3", **kw)


def _no_flip_fields(s) -> bool:
    return s.depth_flip is None and s.features_flip is None and not has_flip_view(s)


def test_hflip_takes_the_mirrored_view_as_it_is_or_the_plain_maps():
    s = _sample()
    out = HFlip(p=1.0)(s)
    assert _no_flip_fields(out)
    assert torch.equal(out.image, s.image.flip(-1)) and torch.equal(out.masks, s.masks.flip(-1))
    assert torch.equal(out.valid, s.valid.flip(-1))
    assert torch.equal(out.depth, s.depth_flip)  # not flipped again: these are the mirrored image's maps
    assert set(out.features) == set(s.features_flip)
    for k, v in s.features_flip.items():
        assert torch.equal(out.features[k], v)
    assert _no_flip_fields(flip(s)) and torch.equal(flip(s).depth, s.depth_flip)

    kept = HFlip(p=0.0)(s)
    assert _no_flip_fields(kept)
    assert torch.equal(kept.image, s.image) and torch.equal(kept.masks, s.masks) and torch.equal(kept.depth, s.depth)
    for k, v in s.features.items():
        assert torch.equal(kept.features[k], v)
    assert _no_flip_fields(DropFlipView()(s)) and torch.equal(DropFlipView()(s).depth, s.depth)


def test_without_flipped_views_hflip_mirrors_the_maps_as_before():
    s = _sample(with_flip=False)
    out = HFlip(p=1.0)(s)
    assert torch.equal(out.depth, s.depth.flip(-1))
    assert torch.equal(out.features["path_3"], s.features["path_3"].flip(-1))
    assert HFlip(p=0.0)(s) is s and DropFlipView()(s) is s


@pytest.mark.parametrize(
    "transform",
    [LargeScaleJitter(32, 0.5, 1.5), Resize(20, 20), ResizeShortSide(24), MatchResolution(8)],
    ids=["lsj", "resize", "resize_short_side", "match_resolution"],
)
def test_other_transforms_refuse_the_flipped_view(transform):
    with pytest.raises(TypeError, match="depth_flip"):
        transform(_sample(), generator=torch.Generator().manual_seed(0))
    transform(_sample(with_flip=False), generator=torch.Generator().manual_seed(0))  # without it: fine


def test_mismatched_flipped_view_is_refused():
    s = _sample(with_flip=False)
    with pytest.raises(ValueError, match="depth_flip"):
        new_sample(s.image, depth=s.depth, features=s.features, depth_flip=torch.zeros(1, 5, 5),
                   features_flip=s.features)  # fmt: skip
    with pytest.raises(ValueError, match="features_flip"):
        new_sample(s.image, depth=s.depth, features=s.features, depth_flip=s.depth.clone(),
                   features_flip={"path_4": s.features["path_4"]})  # fmt: skip


def test_train_pipeline_starts_with_the_flip_and_uses_the_mirrored_view_when_it_flips():
    t = build_train_transforms(image_size=32, min_scale=0.5, max_scale=1.5, hflip=True, feature_stride=8)
    assert isinstance(t.transforms[0], HFlip)
    views = set()
    for seed in range(12):
        # same draws for both: the mirrored view is the mirrored plain maps + 1 (features + 2), so the two
        # runs differ by exactly that constant (on valid pixels) when the flip was drawn, and by nothing else
        a = t(_sample(offset=1.0), generator=torch.Generator().manual_seed(seed))
        b = t(_sample(with_flip=False), generator=torch.Generator().manual_seed(seed))
        assert _no_flip_fields(a)
        assert torch.equal(a.image, b.image) and torch.equal(a.masks, b.masks) and torch.equal(a.valid, b.valid)
        diff = a.depth - b.depth
        flipped = bool(diff.abs().max() > 0.5)
        views.add(flipped)
        torch.testing.assert_close(diff[0], a.valid.float() * (1.0 if flipped else 0.0), rtol=0, atol=1e-5)
        for k in a.features:
            fd = a.features[k] - b.features[k]
            assert (fd.abs().max() > 1.5) == flipped and float(fd.max()) < 2 + 1e-5, (seed, k)
    assert views == {True, False}  # the draws exercised both branches

    no_flip = build_train_transforms(image_size=32, min_scale=0.5, max_scale=1.5, hflip=False, feature_stride=8)
    a = no_flip(_sample(), generator=torch.Generator().manual_seed(0))
    b = no_flip(_sample(with_flip=False), generator=torch.Generator().manual_seed(0))
    assert _no_flip_fields(a) and torch.equal(a.depth, b.depth)
    assert torch.equal(a.features["path_4"], b.features["path_4"])


def test_test_pipeline_drops_the_flipped_view():
    t = build_test_transforms(24, 8)
    a, b = t(_sample()), t(_sample(with_flip=False))
    assert _no_flip_fields(a)
    assert torch.equal(a.image, b.image) and torch.equal(a.depth, b.depth)
    assert all(torch.equal(a.features[k], b.features[k]) for k in b.features)
    batch = collate([a, b])
    assert batch.depth.shape[0] == 2


def test_dataset_attaches_the_cached_flipped_view(tmp_path):
    from dgseg.depth_cache.config import CacheConfig, EstimatorConfig
    from dgseg.depth_cache.images import records_from_json
    from dgseg.depth_cache.precompute import run_precompute
    from dgseg.depth_cache.reader import open_cache
    from dgseg.pipeline.data.dataset import InstanceDataset
    from dgseg.pipeline.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "syn", num_train=3, num_val=0, size=32, seed=0)
    ann, images = tmp_path / "syn" / "annotations" / "train.json", tmp_path / "syn" / "images" / "train"
    est = EstimatorConfig(name="tiny", input_size=28, device="cpu", precision="fp32")
    cfgs = {flip: CacheConfig(root=str(tmp_path / "caches"), levels=["path_4", "path_3"], depth_stride=2,
                              shard_size=4, num_workers=0, flip_views=flip) for flip in (True, False)}  # fmt: skip
    for cfg in cfgs.values():
        run_precompute(records_from_json(ann, images), est, cfg, progress=False)
    flip_reader, plain_reader = (open_cache(c.root, est, c) for c in (cfgs[True], cfgs[False]))
    ds = InstanceDataset(images, ann, reader=flip_reader, feature_levels=["path_4"])
    plain = InstanceDataset(images, ann, reader=plain_reader, feature_levels=["path_4"])
    for i in range(len(ds)):
        s, p = ds[i], plain[i]
        entry = flip_reader.get(s.image_id)
        assert torch.equal(s.depth_flip, entry.flipped.depth) and torch.equal(s.depth, entry.depth)
        assert set(s.features_flip) == {"path_4"}  # the same levels as features
        assert torch.equal(s.features_flip["path_4"], entry.flipped.features["path_4"])
        assert _no_flip_fields(p)  # a cache without flipped views: samples exactly as before
        assert torch.equal(HFlip(p=1.0)(s).depth, entry.flipped.depth)
    train = InstanceDataset(images, ann, build_train_transforms(32, 0.5, 1.5, True, 8), flip_reader, False,
                            ["path_4"])  # fmt: skip
    assert _no_flip_fields(train[0])
