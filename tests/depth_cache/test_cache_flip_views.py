"""flip_views: the cache also stores the maps of the mirrored image, computed by the network on it."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from cache_helpers import make_images
from dgseg.depth_cache.catalog import cache_info, list_summaries, verify_cache
from dgseg.depth_cache.config import CacheConfig, EstimatorConfig
from dgseg.depth_cache.estimators import build_source
from dgseg.depth_cache.estimators.files import FilesDepth
from dgseg.depth_cache.images import records_from_json
from dgseg.depth_cache.key import cache_key, key_fields
from dgseg.depth_cache.precompute import precompute, run_precompute
from dgseg.depth_cache.reader import CacheKeyMismatchError, open_cache
from dgseg.depth_cache.runner import make_runner
from PIL import Image, ImageOps

# landscape, portrait (stored transposed), too wide for the 2:1 canvas (shrunk), odd sizes
SIZES = [(30, 40), (40, 30), (20, 50), (33, 47)]


def _tiny() -> EstimatorConfig:
    return EstimatorConfig(name="tiny", input_size=42, device="cpu", precision="fp32")


def _cache(root, **kw) -> CacheConfig:
    return CacheConfig(root=str(root), levels=["path_4", "path_3"], depth_stride=2, shard_size=3, batch_size=3,
                       num_workers=0, **kw)  # fmt: skip


def _mirror_folder(src, dst):
    """The same images mirrored left-right, under the same file names and ids."""
    dst.mkdir()
    for png in src.glob("*.png"):
        with Image.open(png) as im:
            ImageOps.mirror(im).save(dst / png.name)
    for js in src.glob("*.json"):
        shutil.copy(js, dst / js.name)
    return next(dst.glob("*.json"))


def _maps(entry) -> dict[str, torch.Tensor]:
    return {"depth": entry.depth, **entry.features}


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """A flip_views cache of the images, and plain caches of the images and of their mirrors."""
    tmp = tmp_path_factory.mktemp("flip")
    torch.set_num_threads(1)
    js = make_images(tmp / "img", SIZES)
    mirrored_js = _mirror_folder(tmp / "img", tmp / "mirrored")
    records = records_from_json(js, tmp / "img")
    est = _tiny()
    flip_cfg = _cache(tmp / "caches", flip_views=True)
    run_precompute(records, est, flip_cfg, progress=False)
    plain_cfg = _cache(tmp / "caches")
    run_precompute(records, est, plain_cfg, progress=False)
    mirror_cfg = _cache(tmp / "mirror_caches")
    run_precompute(records_from_json(mirrored_js, tmp / "mirrored"), est, mirror_cfg, progress=False)
    return {
        "records": records, "est": est, "flip_cfg": flip_cfg,
        "flip": open_cache(flip_cfg.root, est, flip_cfg), "plain": open_cache(plain_cfg.root, est, plain_cfg),
        "mirror": open_cache(mirror_cfg.root, est, mirror_cfg),
    }  # fmt: skip


def test_flipped_view_is_the_network_on_the_mirrored_image(caches):
    flip, plain, mirror = caches["flip"], caches["plain"], caches["mirror"]
    assert flip.flip_views and not plain.flip_views
    assert flip.levels == ["path_4", "path_3"] and flip.feature_channels() == plain.feature_channels()
    gaps = []
    for rec, size in zip(caches["records"], SIZES, strict=True):
        entry, want_plain, want_flip = flip.get(rec.id), plain.get(rec.id), mirror.get(rec.id)
        assert plain.get(rec.id).flipped is None and entry.flipped is not None
        assert entry.orig_size == entry.flipped.orig_size == size
        got, got_flip = _maps(entry), _maps(entry.flipped)
        assert set(got) == set(got_flip) == {"depth", "path_4", "path_3"}
        for name, ref in _maps(want_flip).items():
            # stored in fp16; the mirrored image went through another batch
            assert got_flip[name].shape == got[name].shape == ref.shape, (rec.id, name)
            torch.testing.assert_close(got_flip[name], ref, rtol=2e-3, atol=2e-3)
            torch.testing.assert_close(got[name], _maps(want_plain)[name], rtol=2e-3, atol=2e-3)
            gaps.append(float((got[name].flip(-1) - got_flip[name]).norm() / got[name].norm()))
    # the random network is far from flip-equivariant: the stored view is not the flipped plain map
    assert min(gaps) > 0.05


def test_flip_views_verify_and_count_their_bytes(caches):
    cfg, key = caches["flip_cfg"], caches["flip"].key
    result = verify_cache(cfg.root, key, progress=False)
    assert result.ok, result.problems
    assert result.images == len(SIZES)
    info = cache_info(cfg.root, key)
    assert info["flip_views"] and info["levels"] == ["path_4", "path_3"]
    names = ["depth", "path_4", "path_3"]
    assert set(info["maps"]) == set(names) | {f"{n}@flip" for n in names}
    for n in names:  # the mirrored maps have the plain maps' geometry: same raw bytes
        assert info["maps"][f"{n}@flip"]["raw_bytes_per_image"] == info["maps"][n]["raw_bytes_per_image"] > 0
        assert info["maps"][f"{n}@flip"]["stored_bytes_per_image"] > 0
    plain = cache_info(cfg.root, caches["plain"].key)
    assert 1.8 * plain["total_bytes"] < info["total_bytes"] < 2.2 * plain["total_bytes"]
    rows = {r["key"]: r for r in list_summaries(cfg.root)}
    assert rows[key]["flip_views"] and rows[key]["levels"] == ["path_4", "path_3"]
    assert not rows[caches["plain"].key]["flip_views"]


def test_verify_reports_a_flipped_map_that_does_not_match_its_checksum(caches, tmp_path):
    cfg, key = caches["flip_cfg"], caches["flip"].key
    root = tmp_path / "copy"
    shutil.copytree(cfg.root, root)
    marker_path = next((root / key / "shards").glob("*.json"))
    marker = json.loads(marker_path.read_text())
    marker["checksums"]["maps/path_4@flip"] = "0" * 64
    marker_path.write_text(json.dumps(marker))
    (root / key / "index.json").unlink()
    problems = verify_cache(str(root), key, progress=False).problems
    assert problems and all("path_4@flip" in p for p in problems)


def test_flip_views_are_keyed_and_a_plain_config_refuses_a_flip_cache(caches, tmp_path):
    est, cfg = caches["est"], caches["flip_cfg"]
    plain = dataclasses.replace(cfg, flip_views=False)
    assert key_fields(est, cfg)["flip_views"] is True
    assert "flip_views" not in key_fields(est, plain)  # keys of caches made before the option stay valid
    assert cache_key(key_fields(est, cfg)) != cache_key(key_fields(est, plain))
    only_flip = str(tmp_path / "only_flip")
    shutil.copytree(cfg.root, only_flip, ignore=shutil.ignore_patterns(caches["plain"].key))
    with pytest.raises(CacheKeyMismatchError, match="flip_views"):
        open_cache(only_flip, est, plain)


def test_files_source_refuses_flip_views(tmp_path):
    cfg = _cache(tmp_path / "caches", flip_views=True)
    files = EstimatorConfig(name="files", depth_dir=str(tmp_path))
    with pytest.raises(ValueError, match="exact"):
        key_fields(files, cfg)
    runner = make_runner(FilesDepth(tmp_path, "depth", ["depth_s8"]), 2, 42)
    with pytest.raises(ValueError, match="exact"):
        precompute([], runner, {"estimator": "files", "flip_views": True}, cfg, progress=False)


def test_fields_and_config_must_agree_on_flip_views(tmp_path, caches):
    # a key without flip_views over a cache holding flipped views would let a plain config read it
    est = caches["est"]
    cfg = _cache(tmp_path / "caches", flip_views=True)
    fields = key_fields(est, dataclasses.replace(cfg, flip_views=False))
    runner = make_runner(build_source(est, cfg.levels), 2, 42, device="cpu")
    with pytest.raises(ValueError, match="flip_views"):
        precompute([], runner, fields, cfg, progress=False)
