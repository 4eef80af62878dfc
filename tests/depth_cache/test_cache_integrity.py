"""Cache integrity: entries bound to their source files, damaged shards named and repaired,
file names kept inside their folder, one image decoder, and independent jobs sharing one key."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from cache_helpers import SIZES, FakeEstimator, cache_cfg, fake_fields, make_images
from click.testing import CliRunner
from dgseg import cli
from dgseg.depth_cache.catalog import verify_cache
from dgseg.depth_cache.config import CacheConfig, EstimatorConfig
from dgseg.depth_cache.images import decode_image, image_size, records_from_folder, records_from_json
from dgseg.depth_cache.precompute import precompute, run_precompute
from dgseg.depth_cache.reader import CacheReader
from dgseg.depth_cache.runner import make_runner
from dgseg.depth_cache.store import CacheError, CacheStore
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _run(records, cfg, estimator=None, **kw):
    est = estimator or FakeEstimator()
    runner = make_runner(est, cfg.depth_stride, 28, device="cpu", precision="fp32", batch_size=cfg.batch_size)
    return precompute(records, runner, fake_fields(), cfg, progress=False, **kw), est


# ---------------------------------------------------------------- 1. ids bound to their files


def test_an_id_cached_for_another_file_is_refused_naming_both(tmp_path):
    train = records_from_json(make_images(tmp_path / "train", seed=0), tmp_path / "train")
    val = records_from_json(make_images(tmp_path / "val", seed=1), tmp_path / "val")  # same ids, other pictures
    cfg = cache_cfg(tmp_path / "cache")
    _run(train, cfg)
    with pytest.raises(ValueError, match="already have a cache entry made from another file") as err:
        _run(val, cfg)
    assert str(tmp_path / "val" / "img_0001.png") in str(err.value)
    assert str(tmp_path / "train" / "img_0001.png") in str(err.value)


def test_reader_checks_files_against_entries_copy_ok_other_file_refused(tmp_path):
    train = records_from_json(make_images(tmp_path / "train", seed=0), tmp_path / "train")
    make_images(tmp_path / "val", seed=1)
    cfg = cache_cfg(tmp_path / "cache")
    result, _ = _run(train, cfg)
    reader = CacheReader(cfg.root, result.key)
    assert reader.check_sources({r.id: r.path for r in train}) == ([], 0)
    # a copied dataset (new paths and mtimes, same bytes) passes through the content hash
    shutil.copytree(tmp_path / "train", tmp_path / "copy", copy_function=shutil.copyfile)
    assert reader.check_sources({r.id: str(tmp_path / "copy" / Path(r.path).name) for r in train}) == ([], 0)
    problems, _ = reader.check_sources({r.id: str(tmp_path / "val" / Path(r.path).name) for r in train})
    assert len(problems) == len(train) and str(tmp_path / "train" / "img_0001.png") in problems[0]
    # a file rewritten in place with other pixels of the same size: mtime moves, the hash differs
    path = Path(train[3].path)
    arr = np.asarray(Image.open(path)).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    problems, _ = reader.check_sources({train[3].id: str(path)})
    assert len(problems) == 1


def _files_setup(tmp_path, name, seed):
    folder = tmp_path / name
    folder.mkdir()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder


def test_files_source_refuses_two_images_sharing_one_depth_map(tmp_path):
    depth_dir = tmp_path / "depth"
    depth_dir.mkdir()
    np.save(depth_dir / "a.npy", np.random.default_rng(0).uniform(1, 5, (32, 32)).astype(np.float32))
    train, val = _files_setup(tmp_path, "train", 0), _files_setup(tmp_path, "val", 1)
    for folder, first in ((train, 1), (val, 2)):
        (folder / "list.json").write_text(json.dumps({"images": [{"id": first, "file_name": "a.png"}]}))
    est = EstimatorConfig(name="files", depth_dir=str(depth_dir), input_size=32)
    cache = CacheConfig(root=str(tmp_path / "cache"), levels=["depth_s8"], num_workers=0)
    run_precompute(records_from_json(train / "list.json", train), est, cache, progress=False)
    with pytest.raises(ValueError, match="found by image file name") as err:  # another split, another id
        run_precompute(records_from_json(val / "list.json", val), est, cache, progress=False)
    assert str(train / "a.png") in str(err.value) and str(val / "a.png") in str(err.value)


# ---------------------------------------------------------------- 2. damaged shards


def _damaged_cache(tmp_path, how):
    records = records_from_json(make_images(tmp_path / "img"), tmp_path / "img")
    cfg = cache_cfg(tmp_path / "cache")
    result, _ = _run(records, cfg)
    shard = Path(cfg.root) / result.key / "maps" / "path_4" / "c" / "0" / "0" / "0" / "0"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if how == "truncated" else data[:8] + os.urandom(len(data) - 8))
    return records, cfg, result.key


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_reading_a_damaged_shard_names_cache_shard_image_and_the_fix(tmp_path, how):
    records, cfg, key = _damaged_cache(tmp_path, how)
    reader = CacheReader(cfg.root, key)
    with pytest.raises(CacheError) as err:
        reader.get(records[0].id)
    msg = str(err.value)
    assert key in msg and str(cfg.root) in msg and "shard 0" in msg and f"'{records[0].id}'" in msg
    assert f"cache verify {key}" in msg and "--repair" in msg and "precompute-depth" in msg
    reader.get(records[4].id)  # other shards still read


def test_verify_repair_drops_bad_shards_and_precompute_recomputes_them(tmp_path):
    records, cfg, key = _damaged_cache(tmp_path, "truncated")
    args = ["cache", "verify", key, "--root", cfg.root, "--quiet"]
    out = CliRunner().invoke(cli.main, args)
    assert out.exit_code == 1 and "--repair" in out.output
    out = CliRunner().invoke(cli.main, [*args, "--repair"])
    assert out.exit_code == 0 and "dropped shards [0]" in out.output, out.output
    assert records[0].id not in CacheReader(cfg.root, key)
    result, est = _run(records, cfg)
    assert result.computed == 3 and est.calls == 3  # shard 0's images only
    assert verify_cache(cfg.root, key, progress=False).ok


# ---------------------------------------------------------------- 3. names stay inside their folder


def _list(path, names):
    path.write_text(json.dumps({"images": [{"id": i + 1, "file_name": n} for i, n in enumerate(names)]}))
    return path


def test_names_leading_outside_the_image_folder_are_refused(tmp_path):
    img = tmp_path / "img"
    make_images(img, SIZES[:1])
    secret = tmp_path / "secret.png"
    shutil.copy(img / "img_0001.png", secret)
    (img / "link.png").symlink_to(secret)
    (img / "inner.png").symlink_to(img / "img_0001.png")  # a symlink inside the folder is fine
    for name, why in [("../secret.png", "contains '..'"), (str(secret), "absolute"), ("link.png", "symlink")]:
        js = _list(tmp_path / "bad.json", ["img_0001.png", name])
        with pytest.raises(ValueError, match=why) as err:
            records_from_json(js, img)
        assert "bad.json: images[1] (id 2)" in str(err.value)
    js = _list(tmp_path / "ok.json", ["img_0001.png", "inner.png", "link.png"])
    assert len(records_from_json(js, img, allow_symlinks=True)) == 3
    with pytest.raises(ValueError, match="link.png"):
        records_from_folder(img)
    assert len(records_from_folder(img, allow_symlinks=True)) == 3


def test_files_source_refuses_a_map_symlinked_outside(tmp_path):
    from dgseg.depth_cache.estimators.files import FilesDepth

    depth_dir, outside = tmp_path / "depth", tmp_path / "elsewhere.npy"
    depth_dir.mkdir()
    np.save(outside, np.ones((8, 8), np.float32))
    (depth_dir / "a.npy").symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):
        FilesDepth(depth_dir, "depth", ["depth_s2"]).find("a")
    assert FilesDepth(depth_dir, "depth", ["depth_s2"], allow_symlinks=True).find("a") == depth_dir / "a.npy"


# ---------------------------------------------------------------- 4. one decoder


def _odd_images(folder: Path) -> dict[str, np.ndarray]:
    """Files PIL opens in unusual modes, and the RGB a user expects from each."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    g16 = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.uint16)  # 0..65195
    Image.fromarray(g16).save(folder / "gray16.png")
    out["gray16.png"] = np.repeat(np.round(g16 / 257.0).astype(np.uint8)[..., None], 3, -1)
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=100)
    out["cmyk.jpg"] = np.asarray(Image.open(folder / "cmyk.jpg").convert("RGB"))
    pal = Image.fromarray(rgb).quantize(8)
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png", transparency=0)
    expect = np.asarray(pal.convert("RGB")).copy()
    expect[np.asarray(pal) == 0] = 255  # transparent: white, as a viewer shows it
    out["palette.png"] = expect
    la = np.stack([rgb[..., 0], np.where(rgb[..., 1] > 128, 255, 0).astype(np.uint8)], -1)
    Image.fromarray(la, "LA").save(folder / "la.png")
    out["la.png"] = np.repeat(np.where(la[..., 1:] == 255, la[..., :1], 255), 3, -1)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=exif, quality=100)
    out["rotated.jpg"] = np.asarray(Image.open(folder / "rotated.jpg").convert("RGB").transpose(Image.ROTATE_270))
    return out


def test_one_decoder_for_16_bit_cmyk_palette_alpha_and_exif(tmp_path):
    from dgseg.pipeline.data.dataset import read_image

    for name, want in _odd_images(tmp_path).items():
        got = decode_image(str(tmp_path / name)).permute(1, 2, 0).numpy()
        assert got.shape == want.shape, name
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, name
        assert image_size(str(tmp_path / name)) == got.shape[:2], name
        # training (and predict, which uses read_image) decodes exactly as precompute does
        torch.testing.assert_close(read_image(tmp_path / name), torch.from_numpy(got).permute(2, 0, 1).float() / 255)
    assert (decode_image(str(tmp_path / "gray16.png")) == 255).float().mean() < 0.01  # not white


def test_precompute_stores_the_16_bit_image_as_decoded(tmp_path):
    _odd_images(tmp_path / "img")
    records = records_from_folder(tmp_path / "img")
    cfg = cache_cfg(tmp_path / "cache")
    result, _ = _run(records, cfg)
    assert result.computed == len(records) and not result.failed
    rotated = next(r for r in records if r.path.endswith("rotated.jpg"))
    assert CacheReader(cfg.root, result.key).get(rotated.id).orig_size == (32, 24)  # as shown, not as stored


# ---------------------------------------------------------------- 6. independent jobs on one key


def _job(args):
    # the helpers beside the script, and whatever PYTHONPATH this run has (dgseg comes from the install)
    path = [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(HERE / "precompute_job.py"), *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_ready(proc):
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.stderr.read()


def test_two_independent_jobs_split_the_work(tmp_path):
    sizes = (SIZES * 3)[:24]  # 8 shards of 3
    ann = make_images(tmp_path / "img", sizes)
    root, go = tmp_path / "cache", tmp_path / "go"
    jobs = [_job([ann, tmp_path / "img", root, go, 0.03, 30]) for _ in range(2)]
    for j in jobs:
        _wait_ready(j)
    go.touch()  # both start at once
    outs = []
    for j in jobs:
        out, err = j.communicate(timeout=300)
        assert j.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(o["calls"] for o in outs) == len(sizes)  # every image computed exactly once
    assert sum(o["computed"] for o in outs) == len(sizes)
    (key,) = [p.name for p in root.iterdir()]
    assert verify_cache(str(root), key, progress=False).ok
    assert sorted(CacheReader(str(root), key).ids(), key=int) == [str(i + 1) for i in range(len(sizes))]
    assert not list((root / key / "claims").glob("*"))


def test_a_killed_jobs_claims_are_taken_over_after_their_lease(tmp_path):
    sizes = (SIZES * 2)[:12]
    ann = make_images(tmp_path / "img", sizes)
    root, go = tmp_path / "cache", tmp_path / "go"
    go.touch()
    victim = _job([ann, tmp_path / "img", root, go, 1.0, 2.0])  # 1 s per image, 2 s lease
    _wait_ready(victim)
    deadline = time.time() + 120
    while not list(root.glob("*/claims/*.json")) and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    claims = list(root.glob("*/claims/*.json"))  # one, or more when the job got further before the kill
    assert claims and all(json.loads(c.read_text())["images"] for c in claims)  # the dead job's claims stay
    records = records_from_json(ann, tmp_path / "img")
    result, est = _run(records, cache_cfg(root, lease_s=2.0))
    assert est.calls == len(sizes) and result.computed == len(sizes)  # its shard recomputed, nothing lost
    key = result.key
    assert verify_cache(str(root), key, progress=False).ok and len(CacheReader(str(root), key)) == len(sizes)
    assert not list((root / key / "claims").glob("*"))


def test_a_live_claim_of_another_job_is_not_written_over(tmp_path):
    records = records_from_json(make_images(tmp_path / "img"), tmp_path / "img")
    cfg = cache_cfg(tmp_path / "cache", lease_s=1.0)
    store = CacheStore(cfg.root, _run([], cfg)[0].key)
    start = time.time()
    claim = {"shard": 0, "gen": 0, "owner": "other-job", "expires": start + 4, "images": [r.id for r in records[:3]]}
    (Path(store.path) / "claims").mkdir()
    (Path(store.path) / "claims" / "000000.0.json").write_text(json.dumps(claim))
    result, est = _run(records, cfg)
    assert est.calls == len(records)  # the other job never finished: its images were taken over
    markers = store.read_markers()
    first = next(m for m in markers.values() if records[0].id in [i[0] for i in m["images"]])
    written = datetime.fromisoformat(first["written"]).timestamp()
    assert written >= start + 3  # not before the other job's lease ran out
    assert verify_cache(cfg.root, result.key, progress=False).ok
