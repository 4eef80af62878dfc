"""Decoding for precompute: torchvision's JPEG path against PIL's, the batched (GPU-bound) path run
on the CPU, bad files, the default worker count, and the writer pool: the same cache either way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cache_helpers import SIZES, FakeEstimator, cache_cfg, fake_fields, make_images
from dgseg.depth_cache.decode import EncodedImage, decode_batch, default_workers, load_image
from dgseg.depth_cache.entry import normalise_depth
from dgseg.depth_cache.images import decode_image, records_from_json
from dgseg.depth_cache.precompute import precompute
from dgseg.depth_cache.reader import CacheReader
from dgseg.depth_cache.runner import make_runner
from PIL import Image

FLAVOURS = {  # name -> PIL save options
    "q75_420": dict(quality=75, subsampling=2),
    "q95_444": dict(quality=95, subsampling=0),
    "progressive": dict(quality=85, progressive=True),
}


def _photo(h: int, w: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    low = (rng.random((max(2, h // 6), max(2, w // 6), channels)) * 255).astype(np.uint8)
    img = Image.fromarray(low[..., 0] if channels == 1 else low, mode)
    return img.resize((w, h), Image.BILINEAR)


def _jpeg_dir(folder: Path, n_png: int = 2) -> Path:
    """JPEGs of several flavours and sizes plus PNGs, and their COCO-style JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, (h, w) in enumerate(SIZES):
        name = f"img_{i:03d}.{'png' if i < n_png else 'jpg'}"
        img = _photo(h, w, i, "L" if i == 3 else "RGB")
        opts = list(FLAVOURS.values())[i % len(FLAVOURS)]
        img.save(folder / name, **({} if name.endswith("png") else opts))
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    path = folder / "images.json"
    path.write_text(json.dumps({"images": images}))
    return path


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_torchvision_jpeg_pixels_equal_pil(tmp_path, mode, flavour):
    path = tmp_path / "a.jpg"
    _photo(45, 61, 3, mode).save(path, **FLAVOURS[flavour])
    tv = load_image(str(path), "torchvision")
    assert isinstance(tv, torch.Tensor) and tv.dtype == torch.uint8 and tv.shape == (3, 45, 61)
    assert torch.equal(tv, decode_image(str(path)))  # the documented tolerance on a CPU: exact


def test_batched_decode_of_deferred_jpegs_equals_pil_and_isolates_a_bad_file(tmp_path):
    paths = []
    for i, size in enumerate([(30, 40), (30, 40), (25, 33)]):
        paths.append(tmp_path / f"{i}.jpg")
        _photo(*size, i).save(paths[-1], quality=90)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(paths[0].read_bytes()[:200])  # a JPEG cut short: one bad file in the batch
    png = tmp_path / "p.png"
    _photo(20, 20, 9).save(png)
    items = [load_image(str(p), "torchvision", defer_jpeg=True) for p in [*paths, bad, png]]
    assert [type(x) for x in items] == [EncodedImage] * 4 + [torch.Tensor]
    out = decode_batch(items, torch.device("cpu"))
    for p, img in zip([*paths, png], [*out[:3], out[4]], strict=True):
        assert torch.equal(img, decode_image(str(p)))
    assert isinstance(out[3], OSError) and "bad.jpg" in str(out[3])


def _cache(tmp_path, name, records, decoder, defer=False, threads=2):
    cfg = cache_cfg(tmp_path / name, decode=decoder)
    runner = make_runner(FakeEstimator(), cfg.depth_stride, 28, device="cpu", precision="fp32",
                         batch_size=cfg.batch_size, decoder=decoder)
    runner.defer_jpeg = defer  # the GPU path's data flow (bytes in workers, batch decode in prepare), on the CPU
    res = precompute(records, runner, fake_fields(), cfg, progress=False, writer_threads=threads)
    return res, CacheReader(cfg.root, res.key)


def _markers(reader):
    from dgseg.depth_cache.store import CacheStore

    return {k: m["checksums"] for k, m in CacheStore(reader.root, reader.key).read_markers().items()}


def test_cache_bytes_are_identical_from_the_torchvision_and_pil_paths(tmp_path):
    records = records_from_json(_jpeg_dir(tmp_path / "img"), tmp_path / "img")
    ref, pil = _cache(tmp_path, "pil", records, "pil", threads=1)
    assert ref.computed == len(records) and not ref.failed
    for name, defer in [("tv", False), ("tv_deferred", True)]:
        res, reader = _cache(tmp_path, name, records, "torchvision", defer=defer, threads=3)
        assert res.computed == len(records) and res.key == ref.key
        assert _markers(reader) == _markers(pil)  # sha256 of every stored array, shard by shard
        for r in records:
            a, b = reader.get(r.id), pil.get(r.id)
            assert torch.equal(a.depth, b.depth) and all(torch.equal(a.features[k], b.features[k]) for k in b.features)


def test_deferred_path_reports_bad_and_mis_sized_jpegs_and_keeps_the_rest(tmp_path):
    json_path = _jpeg_dir(tmp_path / "img", n_png=0)
    records = records_from_json(json_path, tmp_path / "img")
    (tmp_path / "img" / "img_001.jpg").write_bytes((tmp_path / "img" / "img_001.jpg").read_bytes()[:150])
    data = json.loads(json_path.read_text())
    data["images"][2]["height"] += 1  # the JSON disagrees with the file
    json_path.write_text(json.dumps(data))
    records = records_from_json(json_path, tmp_path / "img")
    res, reader = _cache(tmp_path, "c", records, "torchvision", defer=True)
    assert set(res.failed) == {"2", "3"}
    assert "img_001.jpg" in res.failed["2"] and "the JSON says" in res.failed["3"]
    assert res.computed == len(records) - 2 and reader.get("1").depth.shape[0] == 1


def test_default_workers_follow_the_cores():
    assert default_workers("cuda", 1, cores=16) == 15
    assert default_workers("cuda", 4, cores=64) == 15
    assert default_workers("cuda", 1, cores=64) == 16
    assert default_workers("cuda", 1, cores=1) == 1
    assert default_workers("cpu", 1, cores=2) == 1
    assert default_workers("cpu", 1, cores=16) == 8


def test_batched_depth_normalisation_equals_the_per_image_one():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(5, 37, 49, generator=g) * 5
    d[2] = 1.0  # flat: zeros
    d[3, :10] = 100.0  # clipped at the 98th percentile
    out = normalise_depth(d)
    per_image = normalise_depth(d, torch.ones_like(d, dtype=torch.bool))  # the loop (valid pixels given)
    assert torch.equal(out, per_image) and torch.equal(out[2], torch.zeros_like(out[2]))
    assert torch.equal(normalise_depth(d[0]), out[0])


def test_png_cache_is_unchanged_by_the_decoder(tmp_path):
    records = records_from_json(make_images(tmp_path / "img"), tmp_path / "img")
    _, a = _cache(tmp_path, "pil", records, "pil")
    _, b = _cache(tmp_path, "tv", records, "torchvision", defer=True)
    assert _markers(a) == _markers(b)


def test_unknown_decoder_is_refused(tmp_path):
    p = tmp_path / "a.png"
    _photo(10, 10, 0).save(p)
    with pytest.raises(ValueError, match="unknown image decoder"):
        load_image(str(p), "cv2")


def test_nvjpeg_is_refused_without_a_gpu():
    with pytest.raises(ValueError, match="decode=nvjpeg decodes JPEGs on the GPU, but the estimator runs on cpu"):
        make_runner(FakeEstimator(), 4, 28, device="cpu", decoder="nvjpeg")


def test_decode_gap_measures_pixels_and_maps_of_two_decoders(tmp_path, monkeypatch):
    from dgseg.bench.bench_cache import _images, decode_gap
    from dgseg.depth_cache.estimators.depth_anything_v2 import build_tiny

    records = _images(tmp_path / "img", 3, (48, 64))
    tiny = build_tiny(seed=0, input_size=28, levels=["path_4"])
    same = decode_gap(records, tiny, "cpu", ("pil", "torchvision"))
    assert same["max"] == 0 and same["rel_l2/depth"] == 0 and same["rel_l2/path_4"] == 0
    # a decoder that rounds differently (as nvjpeg does) shows in pixels, depth and features
    import dgseg.depth_cache.decode as decode

    real = decode.decode_image
    monkeypatch.setattr(decode, "decode_image", lambda path: (real(path).int() + 3).clamp(0, 255).to(torch.uint8))
    gap = decode_gap(records, tiny, "cpu", ("torchvision", "pil"))
    assert gap["max"] == 3 and gap["share"] > 0.9 and gap["rel_l2/path_4"] > 0


def test_network_input_batched_per_size_equals_one_image_at_a_time():
    from dgseg.depth_cache.runner import prepare_images

    est = FakeEstimator(input_size=28)
    runner = make_runner(est, 2, 28, device="cpu", precision="fp32")
    g = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, size, generator=g, dtype=torch.uint8) for size in
              [(3, 40, 60), (3, 41, 59), (3, 40, 60), (3, 40, 60)]]  # fmt: skip
    batched = runner._inputs(images, (28, 42))
    alone = torch.cat([prepare_images(img[None], (28, 42), est) for img in images])
    assert batched.shape == (4, 3, 28, 42) and torch.equal(batched, alone)


@pytest.mark.slow
def test_compiled_estimator_stores_the_eager_values(tmp_path):
    """`depth.estimator.compile`: the same cache as eager, to float rounding (compiling takes ~1 min on 2 cores)."""
    records = records_from_json(make_images(tmp_path / "img", SIZES[:4]), tmp_path / "img")
    readers = {}
    for name, compile_ in [("eager", False), ("compiled", True)]:
        cfg = cache_cfg(tmp_path / name)
        runner = make_runner(FakeEstimator(), cfg.depth_stride, 28, device="cpu", precision="fp32",
                             batch_size=cfg.batch_size, compile=compile_)
        res = precompute(records, runner, fake_fields(), cfg, progress=False)
        assert res.computed == len(records) and runner.compiled == compile_
        readers[name] = CacheReader(cfg.root, res.key)
    for r in records:
        a, b = readers["compiled"].get(r.id), readers["eager"].get(r.id)
        torch.testing.assert_close(a.depth, b.depth, rtol=1e-3, atol=1e-3)
        for k in b.features:
            torch.testing.assert_close(a.features[k], b.features[k], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("defer", [False, True])
def test_exif_rotated_jpeg_is_decoded_upright_like_the_pil_path(tmp_path, defer):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    _photo(30, 50, 4).save(path, quality=90, exif=exif)
    img = load_image(str(path), "torchvision", defer_jpeg=defer)
    assert isinstance(img, torch.Tensor)  # PIL's path, also when the GPU would decode the others
    assert img.shape == (3, 50, 30) and torch.equal(img, decode_image(str(path)))


def test_maps_cast_to_fp16_before_the_copy_store_the_bytes_of_a_cast_on_the_host(tmp_path, monkeypatch):
    import dgseg.depth_cache.runner as runner_mod

    records = records_from_json(_jpeg_dir(tmp_path / "img"), tmp_path / "img")
    cfg = cache_cfg(tmp_path / "device", decode="torchvision")
    runner = make_runner(FakeEstimator(), cfg.depth_stride, 28, device="cpu", precision="fp32",
                         batch_size=cfg.batch_size)
    seen = []
    real_run = runner.run_async
    runner.run_async = lambda inputs, frames: (seen.append(runner.map_dtype), real_run(inputs, frames))[1]
    res = precompute(records, runner, fake_fields(), cfg, progress=False)
    assert set(seen) == {torch.float16} and runner.map_dtype == torch.float32  # cast during the job only

    class HostCast(runner_mod.NetworkRunner):  # the path before: float32 maps, cast by pack_shard
        map_dtype = property(lambda self: torch.float32, lambda self, value: None)

    monkeypatch.setattr(runner_mod, "NetworkRunner", HostCast)
    _, host = _cache(tmp_path, "host", records, "torchvision")
    assert _markers(CacheReader(cfg.root, res.key)) == _markers(host)
