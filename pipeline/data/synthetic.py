"""A generated RGB-D instance dataset whose instances are ambiguous in colour but clear in depth.

Each scene is a textured background plane far away and 2-5 flat objects (ellipse, rectangle,
triangle) at their own, slightly tilted depth planes nearer to the camera. Objects and the
background are painted with patches and stripes drawn from ONE shared palette, and no colour or
pattern depends on the class, so colour alone separates neither the instances nor the classes;
depth does (each object is a plane of its own, the background is farther than every object).
Objects occlude each other (the nearer one wins), so the masks of one image never overlap;
an instance left with fewer than `min_area` visible pixels is removed from the scene altogether
(it is neither drawn nor annotated), so nothing visible lacks a label.

On disk (`generate_dataset`):
- `images/{train,val}/{split}_{i:06d}.png`: RGB, 8 bit;
- `depth/{split}_{i:06d}.png`: 16-bit grayscale, metric depth in MILLIMETRES, far = larger
  (objects 1.2-5.2 m, background 5.8-9.2 m); named by the image file stem, one folder for both splits;
- `annotations/{train,val}.json`: COCO, categories 1 ellipse, 2 rectangle, 3 triangle,
  segmentations as compressed RLE. Image ids are unique across the two splits
  (train 1..num_train, val num_train+1..), since a depth cache is keyed by image id.

Everything is vectorised numpy per image, and image `i` of a split depends only on
(`seed`, split, `i`), so the output is the same bytes for the same arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

CATEGORIES = [
    {"id": 1, "name": "ellipse", "supercategory": "shape"},
    {"id": 2, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]
# Shared by objects and background: muted mid-saturation colours, so no single one stands out.
PALETTE = np.array(
    [[190, 70, 60], [60, 150, 80], [70, 90, 180], [200, 180, 70], [150, 80, 160], [80, 170, 170], [170, 170, 170]],
    dtype=np.float32,
)
_SPLIT_CODE = {"train": 0, "val": 1}


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(S, S, 3) float texture: stripes or blocks over the given palette colours (several per region)."""
    size = yy.shape[0]
    if rng.random() < 0.5:  # stripes at a random angle and period
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(3, 9) * size / 128
        phase = (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 1)
        idx = np.floor(phase).astype(np.int64) % len(colours)
    else:  # blocks of random colours on a random grid
        cell = max(2, int(round(rng.uniform(3, 10) * size / 128)))
        n = size // cell + 2
        grid = rng.integers(0, len(colours), size=(n, n))
        oy, ox = rng.integers(0, cell, size=2)
        idx = grid[(yy.astype(np.int64) + oy) // cell, (xx.astype(np.int64) + ox) // cell]
    return colours[idx]


def _shape_mask(rng: np.random.Generator, kind: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(S, S) bool coverage of one randomly placed, sized and rotated shape of class `kind` (1..3)."""
    size = yy.shape[0]
    cy, cx = rng.uniform(0.1, 0.9, size=2) * size
    a, b = rng.uniform(0.08, 0.22, size=2) * size
    theta = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    if kind == 1:
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == 2:
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    # triangle: inside the three edges of a (stretched) equilateral triangle
    angles = np.array([0.0, 2.0, 4.0]) * np.pi / 3
    px, py = a * 1.2 * np.cos(angles), b * 1.2 * np.sin(angles)
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        x0, y0, x1, y1 = px[k], py[k], px[(k + 1) % 3], py[(k + 1) % 3]
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def render_scene(rng: np.random.Generator, size: int = 128, min_area: int | None = None):
    """One scene: (rgb (S,S,3) uint8, depth_mm (S,S) uint16, masks (N,S,S) bool, labels (N,) category ids)."""
    min_area = max(12, int(0.003 * size * size)) if min_area is None else min_area
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    # background: a receding plane (top farther), textured with the whole palette
    bg_depth = 9.0 - 3.0 * yy / size + rng.uniform(-0.3, 0.3) * (xx / size - 0.5)
    rgb = _texture(rng, yy, xx, PALETTE)

    num = int(rng.integers(2, 6))
    kinds = rng.integers(1, 4, size=num)
    # distinct depth planes 0.4 m apart (+ jitter), each slightly tilted
    planes = 1.6 + 0.4 * rng.choice(9, size=num, replace=False) + rng.uniform(-0.1, 0.1, size=num)
    covers, depths, textures = [], [], []
    for k in range(num):
        covers.append(_shape_mask(rng, int(kinds[k]), yy, xx))
        gy, gx = rng.uniform(-0.3, 0.3, size=2) / size
        depths.append(planes[k] + gy * (yy - size / 2) + gx * (xx - size / 2))
        colours = PALETTE[rng.choice(len(PALETTE), size=int(rng.integers(2, 4)), replace=False)]
        textures.append(_texture(rng, yy, xx, colours))
    cover = np.stack(covers)
    zbuf = np.where(cover, np.stack(depths), np.inf)

    # drop objects whose visible part is tiny; removing one only uncovers others, so one pass suffices
    front = np.argmin(zbuf, axis=0)
    seen = np.isfinite(zbuf.min(axis=0))
    areas = np.array([(seen & (front == k)).sum() for k in range(num)])
    keep = areas >= min_area
    zbuf = zbuf[keep]
    kinds, textures = kinds[keep], [t for t, k in zip(textures, keep, strict=True) if k]
    front = np.argmin(zbuf, axis=0) if len(zbuf) else np.zeros((size, size), dtype=np.int64)
    seen = np.isfinite(zbuf.min(axis=0)) if len(zbuf) else np.zeros((size, size), dtype=bool)

    masks = np.zeros((len(kinds), size, size), dtype=bool)
    for k in range(len(kinds)):
        masks[k] = seen & (front == k)
    depth = bg_depth.copy()
    for k in range(len(kinds)):
        rgb = np.where(masks[k][..., None], textures[k], rgb)
        depth = np.where(masks[k], zbuf[k], depth)
    rgb = rgb + rng.normal(0, 6, size=rgb.shape)  # sensor noise, identical statistics everywhere
    rgb8 = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    depth_mm = np.clip(np.round(depth * 1000), 0, 65535).astype(np.uint16)
    return rgb8, depth_mm, masks, kinds.astype(np.int64)


def _annotations(masks: np.ndarray, labels: np.ndarray, image_id: int, first_ann_id: int) -> list[dict]:
    anns = []
    for k in range(len(labels)):
        rle = mask_utils.encode(np.asfortranarray(masks[k].astype(np.uint8)))
        anns.append(
            {
                "id": first_ann_id + k,
                "image_id": image_id,
                "category_id": int(labels[k]),
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": int(mask_utils.area(rle)),
                "bbox": [float(x) for x in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return anns


def generate_split(out_dir: Path, split: str, num: int, size: int, seed: int, first_image_id: int) -> dict:
    """Write `num` images + depth maps of `split` under `out_dir`; return the split's COCO dict."""
    img_dir, depth_dir = out_dir / "images" / split, out_dir / "depth"
    img_dir.mkdir(parents=True, exist_ok=True)
    depth_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in tqdm(range(num), desc=f"synthetic {split}", leave=False, disable=num < 200):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        rgb, depth_mm, masks, labels = render_scene(rng, size)
        stem = f"{split}_{i:06d}"
        Image.fromarray(rgb, mode="RGB").save(img_dir / f"{stem}.png")
        Image.fromarray(depth_mm).save(depth_dir / f"{stem}.png")
        image_id = first_image_id + i
        images.append({"id": image_id, "file_name": f"{stem}.png", "height": size, "width": size})
        # at most 5 objects per image, so image_id * 10 + k is unique across both splits
        anns.extend(_annotations(masks, labels, image_id, first_ann_id=image_id * 10))
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def generate_dataset(out_dir: Path, num_train: int = 1000, num_val: int = 200, size: int = 128, seed: int = 0) -> str:
    """Write the whole dataset (see the module docstring for the layout); return a one-line summary."""
    if num_train < 1 or num_val < 0 or size < 16:
        raise ValueError(
            f"make-synthetic: need num_train >= 1, num_val >= 0, size >= 16 (got {num_train}, {num_val}, {size})"
        )
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    counts = []
    for split, num, first in (("train", num_train, 1), ("val", num_val, num_train + 1)):
        coco = generate_split(out_dir, split, num, size, seed, first_image_id=first)
        with open(out_dir / "annotations" / f"{split}.json", "w") as f:
            json.dump(coco, f)
        counts.append(f"{split}: {num} images, {len(coco['annotations'])} instances")
    return f"wrote {out_dir} ({'; '.join(counts)}; {size}x{size}, seed {seed}, depth in mm)"
