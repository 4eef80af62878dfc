"""The cache stores what the source produced and the reader gives it back cropped to each image."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import zarr
from cache_helpers import SIZES, FakeEstimator, cache_cfg, fake_fields, make_images
from dgseg.depth_cache.catalog import verify_cache
from dgseg.depth_cache.chunks import ShardChunkReader, fast_layout
from dgseg.depth_cache.geometry import fit_frame, make_canvas
from dgseg.depth_cache.images import records_from_json
from dgseg.depth_cache.precompute import precompute
from dgseg.depth_cache.reader import CacheReader, MissingEntryError
from dgseg.depth_cache.runner import make_runner
from dgseg.depth_cache.store import CacheStore, array_path


def _build(tmp_path, root=None, **cfg_kw):
    records = records_from_json(make_images(tmp_path / "img"), tmp_path / "img")
    cfg = cache_cfg(root or tmp_path / "cache", **cfg_kw)
    runner = make_runner(FakeEstimator(), cfg.depth_stride, 28, device="cpu", precision="fp32", batch_size=2)
    result = precompute(records, runner, fake_fields(dtype=cfg.dtype), cfg, progress=False)
    return records, runner, cfg, result, CacheReader(cfg.root, result.key)


def _expected(runner, record, canvas):
    """What the source gives for one image, computed alone (no batching, no storage)."""
    from dgseg.depth_cache.images import decode_image

    img = decode_image(record.path)
    frame, _ = fit_frame(runner.natural_frame(tuple(img.shape[-2:])), canvas, 14)
    return runner.run([img], [frame])[0]


def test_fp16_round_trip_gives_source_maps_at_image_extent(tmp_path):
    records, runner, cfg, result, reader = _build(tmp_path)
    assert result.computed == len(SIZES) and sorted(reader.ids()) == sorted(r.id for r in records)
    canvas = make_canvas(28, 2.0, 14)
    for rec, (h, w) in zip(records, SIZES, strict=True):
        entry = reader.get(rec.id)
        want = _expected(runner, rec, canvas)
        assert entry.orig_size == (h, w)
        got = {"depth": entry.depth, **entry.features}
        assert set(got) == {"depth", "path_4", "path_3"}
        for name, t in got.items():
            assert t.dtype == torch.float32 and t.shape == want[name].shape, (rec.id, name)
            torch.testing.assert_close(t, want[name], rtol=2e-3, atol=2e-3)
        # normalised per image (pooling to the depth stride may average the extremes a little)
        assert 0.0 <= float(entry.depth.min()) <= 0.05 and 0.95 <= float(entry.depth.max()) <= 1.0


def test_geometry_of_portrait_and_too_wide_images(tmp_path):
    records, _, _, _, reader = _build(tmp_path)
    by_size = dict(zip(SIZES, records, strict=True))
    portrait = reader.geometry(by_size[(60, 40)].id)
    assert portrait.transposed and portrait.frame_size == (42, 28)
    assert reader.get(by_size[(60, 40)].id).features["path_4"].shape[-2:] == (3, 2)
    wide = reader.geometry(by_size[(20, 90)].id)  # aspect 4.5 > canvas 2: shrunk to fit 28x56
    assert not wide.transposed and wide.frame_size == (14, 56)
    assert reader.get(by_size[(20, 90)].id).depth.shape == (1, 7, 28)


def test_int8_error_is_at_most_half_a_step_per_channel(tmp_path):
    records, runner, cfg, _, reader = _build(tmp_path, dtype="int8")
    canvas = make_canvas(28, 2.0, 14)
    worst = 0.0
    for rec in records:
        entry, want = reader.get(rec.id), _expected(runner, rec, canvas)
        for name, t in {"depth": entry.depth, **entry.features}.items():
            ref = want[name]
            step = ref.abs().flatten(1).amax(1) / 127.0  # per channel
            err = (t - ref).abs().flatten(1).amax(1)
            assert torch.all(err <= step / 2 + 1e-6), (rec.id, name)
            worst = max(worst, float((err / ref.abs().flatten(1).amax(1).clamp_min(1e-12)).max()))
    assert 0 < worst <= 0.5 / 127 + 1e-6  # int8 really is lossy, and by no more than half a step
    assert verify_cache(cfg.root, reader.key, progress=False).ok


def test_fast_chunk_reader_equals_zarr(tmp_path):
    _, _, cfg, result, reader = _build(tmp_path)
    store = CacheStore(cfg.root, result.key)
    for name in ["depth", "path_4", "path_3"]:
        path = array_path(name)
        layout = fast_layout(store.array_meta(path))
        assert layout is not None  # the layout we write is the one we read fast
        fast = ShardChunkReader(store.fs, f"{store.path}/{path}", layout, store.local)
        arr = zarr.open_array(store=store._zarr_store(), path=path, mode="r")
        for slot in range(9):  # 3 shards of 3; slot 8 is past the last image
            want = arr[slot]
            got = fast.read(slot)
            if np.isnan(want).all():
                assert got is None
            else:
                np.testing.assert_array_equal(got, want)


def test_missing_id_raises_keyerror_naming_id_and_cache(tmp_path):
    _, _, _, result, reader = _build(tmp_path)
    with pytest.raises(KeyError) as info:
        reader.get("no-such-image")
    assert isinstance(info.value, MissingEntryError)
    assert "no-such-image" in str(info.value) and result.key in str(info.value)
    assert reader.missing(["1", "no-such-image", "2"]) == ["no-such-image"]
    assert "1" in reader and "no-such-image" not in reader


class _Reads(torch.utils.data.Dataset):
    def __init__(self, reader, ids):
        self.reader, self.ids = reader, ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.reader.get(self.ids[i]).features["path_3"].sum()


def test_reader_pickles_unopened_and_reads_in_dataloader_workers(tmp_path):
    _, _, _, _, reader = _build(tmp_path)
    ids = reader.ids()  # opens in this process
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._state is None  # each process opens its own
    direct = [float(reader.get(i).features["path_3"].sum()) for i in ids]
    loader = torch.utils.data.DataLoader(_Reads(reader, ids), batch_size=None, num_workers=2)
    assert [float(x) for x in loader] == pytest.approx(direct)


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_fsspec_url_root(tmp_path, scheme):
    root = "memory://dgseg-test-caches" if scheme == "memory" else (tmp_path / "cache").as_uri()
    _, _, cfg, result, reader = _build(tmp_path, root=root)
    assert len(reader) == len(SIZES)
    local_records, _, _, _, local = _build(tmp_path / "local")
    for rec in local_records:
        torch.testing.assert_close(reader.get(rec.id).features["path_4"], local.get(rec.id).features["path_4"])
    assert verify_cache(root, result.key, progress=False).ok
    if scheme == "memory":
        import fsspec

        fsspec.filesystem("memory").rm("/dgseg-test-caches", recursive=True)
