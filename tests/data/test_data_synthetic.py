"""The generated RGB-D dataset: annotations agree with pycocotools, masks are disjoint, output is deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from dgseg.pipeline.data.synthetic import generate_dataset, render_scene
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_annotations_match_masks(tmp_path):
    generate_dataset(tmp_path, num_train=24, num_val=6, size=64, seed=3)
    for split, n in (("train", 24), ("val", 6)):
        coco = COCO(str(tmp_path / "annotations" / f"{split}.json"))
        assert len(coco.getImgIds()) == n
        assert sorted(coco.getCatIds()) == [1, 2, 3]
        for img in coco.loadImgs(coco.getImgIds()):
            rgb = Image.open(tmp_path / "images" / split / img["file_name"])
            assert rgb.mode == "RGB" and rgb.size == (64, 64)
            depth = np.asarray(Image.open(tmp_path / "depth" / img["file_name"]))
            assert depth.shape == (64, 64) and depth.dtype == np.uint16
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert anns, "every scene keeps at least one object"
            cover = np.zeros((64, 64), dtype=np.int32)
            for a in anns:
                rle = coco.annToRLE(a)
                m = mask_utils.decode(rle).astype(bool)
                assert int(mask_utils.area(rle)) == a["area"] == m.sum() > 0
                ys, xs = np.nonzero(m)
                expected = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert np.allclose(a["bbox"], expected)
                cover += m
                # objects (<= 5.2 m) are nearer than the background (>= 5.8 m)
                assert depth[m].max() < 5300
            assert cover.max() <= 1, "masks of one image overlap"
            assert depth[cover == 0].min() >= 5800 if (cover == 0).any() else True


def test_ids_unique_across_splits(tmp_path):
    generate_dataset(tmp_path, num_train=5, num_val=5, size=32, seed=0)
    train = COCO(str(tmp_path / "annotations" / "train.json"))
    val = COCO(str(tmp_path / "annotations" / "val.json"))
    assert not set(train.getImgIds()) & set(val.getImgIds())
    assert not set(train.getAnnIds()) & set(val.getAnnIds())


def test_deterministic_per_seed(tmp_path):
    generate_dataset(tmp_path / "a", num_train=8, num_val=2, size=48, seed=7)
    generate_dataset(tmp_path / "b", num_train=8, num_val=2, size=48, seed=7)
    generate_dataset(tmp_path / "c", num_train=8, num_val=2, size=48, seed=8)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_colour_does_not_give_the_instances_away():
    # the mean colour of objects and of the background are close: both drawn from one palette
    rng = np.random.default_rng(0)
    obj, bg = [], []
    for _ in range(40):
        rgb, _, masks, _ = render_scene(rng, 64)
        fg = masks.any(0)
        obj.append(rgb[fg].mean(0))
        bg.append(rgb[~fg].mean(0))
    assert np.abs(np.mean(obj, 0) - np.mean(bg, 0)).max() < 20


def test_generates_200_images(tmp_path):
    summary = generate_dataset(tmp_path, num_train=200, num_val=0, size=128, seed=0)
    assert "200 images" in summary
    assert len(list((tmp_path / "images" / "train").glob("*.png"))) == 200


# --- scene distributions (SceneSpec / presets) ---------------------------------------------------

from dgseg.pipeline.data.synthetic import PRESETS, SceneSpec, parse_range, scene_spec  # noqa: E402


def test_small_preset_objects_stand_on_the_ground():
    """Ground layout: every object's depth equals the ground's just below its lowest visible pixel
    (continuous contact), objects are smaller than the default's, four classes."""
    rng = np.random.default_rng(0)
    spec = PRESETS["small"]
    small_areas, default_areas, contacts = [], [], 0
    for _ in range(30):
        rgb, depth_mm, masks, labels = render_scene(rng, 128, spec=spec)
        assert set(labels.tolist()) <= {1, 2, 3, 4}
        assert len(masks) <= 7 and not (masks.sum(0) > 1).any()
        cover = masks.any(0)
        for m in masks:
            small_areas.append(int(m.sum()))
            ys, xs = np.nonzero(m)
            bottom = ys.max()
            # ground pixels right below the object's bottom row
            below = [x for x in xs[ys == bottom] if bottom + 2 < 128 and not cover[bottom + 1:bottom + 3, x].any()]
            if below:
                obj_depth = depth_mm[m].mean()
                ground = np.mean([float(depth_mm[bottom + 1, x]) for x in below])
                step = np.mean([abs(float(depth_mm[bottom + 2, x]) - float(depth_mm[bottom + 1, x])) for x in below])
                # within about one row's change of the ground (steep near the horizon); a floating
                # object would sit metres in front of it
                assert abs(ground - obj_depth) <= 1.5 * step + 0.01 * obj_depth, (ground, obj_depth, step)
                contacts += 1
        for m in render_scene(rng, 128)[2]:
            default_areas.append(int(m.sum()))
    assert contacts > 40
    assert np.median(small_areas) < 0.5 * np.median(default_areas)
    assert np.percentile(small_areas, 10) < 120


def test_distractors_paint_rgb_but_not_depth_or_labels():
    """With distractors only (one object), RGB has object-like shapes that depth and labels lack."""
    base = SceneSpec(layout="ground", objects=(1, 1), distractors=(0, 0))
    with_d = SceneSpec(layout="ground", objects=(1, 1), distractors=(3, 3))
    a = render_scene(np.random.default_rng(5), 96, spec=base)
    b = render_scene(np.random.default_rng(5), 96, spec=with_d)
    # the same background depth (distractors are flat paint), different pixels outside the objects
    bg = ~(a[2].any(0) | b[2].any(0))
    assert np.array_equal(a[1][bg], b[1][bg])
    assert (np.abs(a[0][bg].astype(int) - b[0][bg].astype(int)).sum(-1) > 60).mean() > 0.01


def test_spec_options_and_errors(tmp_path):
    spec = scene_spec("small", objects=(3, 3), classes=("diamond", "cross"))
    assert spec.layout == "ground" and spec.categories()[1] == {"id": 2, "name": "cross", "supercategory": "shape"}
    generate_dataset(tmp_path, num_train=4, num_val=1, size=48, seed=0, spec=spec)
    coco = COCO(str(tmp_path / "annotations" / "train.json"))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == ["cross", "diamond"]
    assert coco.dataset["info"]["scene"]["classes"] == ["diamond", "cross"]
    assert parse_range("2-7", int, "objects") == (2, 7) and parse_range("0.1", float, "x") == (0.1, 0.1)
    for bad in (dict(objects=(0, 3)), dict(objects=(4, 2)), dict(object_size=(0.1, 0.9)),
                dict(classes=("hexagon",)), dict(classes=()), dict(distractors=(2, 1)), dict(layout="table")):
        try:
            SceneSpec(**bad)
        except ValueError as err:
            assert "make-synthetic" in str(err)
        else:
            raise AssertionError(f"accepted {bad}")


def test_make_synthetic_cli_preset(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "cli.py", "make-synthetic", "--out", str(tmp_path / "s"), "--num-train", "3",
                          "--num-val", "1", "--size", "64", "--preset", "small", "--objects", "9-9"],
                         cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    coco = COCO(str(tmp_path / "s" / "annotations" / "train.json"))
    assert len(coco.getCatIds()) == 4
    bad = subprocess.run([sys.executable, "cli.py", "make-synthetic", "--out", str(tmp_path / "t"), "--objects", "x-2"],
                         cwd=root, capture_output=True, text=True)
    assert bad.returncode != 0 and "--objects" in bad.stderr + bad.stdout


# --- the third distribution: clutter on a table (tabletop layout, new shapes) ----------------------

from dgseg.pipeline.data.synthetic import SHAPES  # noqa: E402


def _neighbours(a: np.ndarray, b: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (p, q) of pixels next to each other along `axis`, p in `a` and q in `b` (both orders)."""
    lo = [slice(None)] * 2
    hi = [slice(None)] * 2
    lo[axis], hi[axis] = slice(0, -1), slice(1, None)
    lo, hi = tuple(lo), tuple(hi)
    first = np.nonzero(a[lo] & b[hi])
    second = np.nonzero(a[hi] & b[lo])
    step = np.eye(2, dtype=int)[axis]
    p = np.concatenate([np.stack(first, 1), np.stack(second, 1) + step])
    q = np.concatenate([np.stack(first, 1) + step, np.stack(second, 1)])
    return p, q


def test_clutter_preset_writes_a_dataset(tmp_path):
    """Many objects per image, five classes, disjoint masks of >= min_area pixels, and a table whose depth
    rises from the bottom row (about 0.8 m) to the top row (about 2.5 m) with no backdrop."""
    spec = PRESETS["clutter"]
    summary = generate_dataset(tmp_path, num_train=12, num_val=3, size=128, seed=1, spec=spec)
    assert "12 images" in summary and "3 images" in summary
    counts = []
    for split, n in (("train", 12), ("val", 3)):
        coco = COCO(str(tmp_path / "annotations" / f"{split}.json"))
        assert len(coco.getImgIds()) == n
        assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == list(spec.classes)
        assert coco.dataset["info"]["scene"]["layout"] == "tabletop"
        for img in coco.loadImgs(coco.getImgIds()):
            assert Image.open(tmp_path / "images" / split / img["file_name"]).mode == "RGB"
            depth = np.asarray(Image.open(tmp_path / "depth" / img["file_name"])).astype(np.int64)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            counts.append(len(anns))
            cover = np.zeros((128, 128), dtype=np.int32)
            for a in anns:
                m = coco.annToMask(a).astype(bool)
                assert a["area"] == m.sum() >= spec.min_area
                cover += m
            assert cover.max() <= 1, "masks of one image overlap"
            table = cover == 0
            # the table everywhere it shows: farther one row up (top = far), no backdrop
            both = table[:-1] & table[1:]
            assert (depth[:-1][both] > depth[1:][both]).all()
            assert 650 <= depth[-1][table[-1]].mean() <= 950 and 2150 <= depth[0][table[0]].mean() <= 2850
            assert depth.max() <= 2950  # 2.8 m and a 5 % sideways roll
    assert all(1 <= n <= spec.objects[1] for n in counts)
    assert np.mean(counts) >= 6, counts  # clutter: many objects survive the occlusion


def test_clutter_objects_lie_on_the_table_and_on_each_other():
    """An object is only slightly nearer than the table beside it in the same row (a few cm: weak but
    present depth edges); objects touch and overlap a lot, and where two touch, one is nearer."""
    rng = np.random.default_rng(0)
    spec = PRESETS["clutter"]
    steps, touching, total, between = [], 0, 0, []
    for _ in range(20):
        _, depth_mm, masks, labels = render_scene(rng, 128, spec=spec)
        depth = depth_mm.astype(np.int64)
        assert set(labels.tolist()) <= {1, 2, 3, 4, 5} and len(masks) <= 14
        assert not (masks.sum(0) > 1).any()
        table = ~masks.any(0)
        for m in masks:
            p, q = _neighbours(m, table, axis=1)  # same row: the table's depth hardly changes sideways
            if len(p):
                step = depth[q[:, 0], q[:, 1]] - depth[p[:, 0], p[:, 1]]
                assert (step > 0).all(), "an object is nearer than the table beside it"
                steps.append(np.median(step))
            others = masks.any(0) & ~m
            p, q = _neighbours(m, others, axis=1)
            touching += bool(len(p))
            total += 1
            between.extend(np.abs(depth[q[:, 0], q[:, 1]] - depth[p[:, 0], p[:, 1]]).tolist())
    assert 10 <= np.median(steps) <= 60, np.median(steps)  # a few cm: weak edges, unlike the default's metres
    assert touching / total > 0.4, touching / total
    assert np.median(between) >= 5


def test_clutter_is_deterministic(tmp_path):
    spec = PRESETS["clutter"]
    generate_dataset(tmp_path / "a", num_train=6, num_val=2, size=64, seed=4, spec=spec)
    generate_dataset(tmp_path / "b", num_train=6, num_val=2, size=64, seed=4, spec=spec)
    generate_dataset(tmp_path / "c", num_train=6, num_val=2, size=64, seed=5, spec=spec)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_new_shapes_are_distinct_and_inside_their_extents():
    vv, uu = np.mgrid[-40:41, -40:41].astype(float)
    a, b = 30.0, 22.0
    masks = {name: fn(uu, vv, a, b) for name, fn in SHAPES.items()}
    for name in ("ring", "star", "pentagon"):
        m = masks[name]
        assert m.sum() > 200, name
        assert np.abs(uu[m]).max() <= a and np.abs(vv[m]).max() <= b, name
        for other, o in masks.items():
            if other != name:
                assert (m != o).sum() > 0.1 * m.sum(), (name, other)
    assert not masks["ring"][40, 40] and masks["ring"][40, 40 + 25]  # a hole in the middle
    assert masks["star"].sum() < masks["pentagon"].sum() < masks["ellipse"].sum()
    # the star's five points: along its axis it reaches a, halfway between two points it does not
    assert masks["star"][40, 40 + 29] and not masks["star"][40 + 15, 40 + 20]


def test_make_synthetic_cli_clutter(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "cli.py", "make-synthetic", "--out", str(tmp_path / "s"), "--num-train", "4",
                          "--num-val", "2", "--size", "64", "--preset", "clutter"],
                         cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    coco = COCO(str(tmp_path / "s" / "annotations" / "train.json"))
    assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == ["ring", "star", "pentagon", "cross",
                                                                           "triangle"]
    assert len(list((tmp_path / "s" / "images" / "val").glob("*.png"))) == 2
    assert len(list((tmp_path / "s" / "depth").glob("*.png"))) == 6
