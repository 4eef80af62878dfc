"""Generated RGB-D instance datasets whose instances are ambiguous in colour but clear in depth.

Three scene layouts (`SceneSpec`, named distributions in `PRESETS`, `make-synthetic --preset`):
- "default" (floating): a textured background plane far away and 2-5 flat objects (ellipse,
  rectangle, triangle) at their own, slightly tilted depth planes nearer to the camera;
- "small" (ground): 2-7 small objects standing on a ground plane below a horizon, each at the
  ground's depth where it stands (so its depth meets the ground's along the contact line), a far
  backdrop, four classes, and shapes painted flat on the ground/backdrop as distractors;
- "clutter" (tabletop): 6-14 flat objects of widely varying size lying on a table seen obliquely from
  above (the table fills the image), each a few cm above the table or above the objects it lies on, so
  depth edges are weak; piles overlap a lot, five classes (ring, star, pentagon, cross, triangle),
  a few painted distractors.
Every option (count, size range, layout, classes, distractors) can be set on its own, so tests and
tables need not be tuned to one generator. Objects and the background are painted with patches
and stripes drawn from ONE shared palette, and no colour or pattern depends on the class, so colour
alone separates neither the instances nor the classes; depth does. Objects occlude each other (the
nearer one wins), so the masks of one image never overlap; an instance left with fewer than
`min_area` visible pixels is removed from the scene altogether (neither drawn nor annotated), so
nothing visible lacks a label.

On disk (`generate_dataset`):
- `images/{train,val}/{split}_{i:06d}.png`: RGB, 8 bit;
- `depth/{split}_{i:06d}.png`: 16-bit grayscale, metric depth in MILLIMETRES, far = larger
  (default: objects 1.2-5.2 m, background 5.8-9.2 m; ground: 1.5 m at the bottom row to a
  9-12 m backdrop; tabletop: 0.7-0.9 m at the bottom row to 2.2-2.8 m at the top, +-5 % sideways);
  named by the image file stem, one folder for both splits;
- `annotations/{train,val}.json`: COCO, categories 1..K in `SceneSpec.classes` order, segmentations
  as compressed RLE, the generator's settings under "info". Image ids are unique across the two
  splits (train 1..num_train, val num_train+1..), since a depth cache is keyed by image id.

Everything is vectorised numpy per image, and image `i` of a split depends only on
(`seed`, spec, split, `i`), so the output is the same bytes for the same arguments.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

CATEGORIES = [  # the default scenes' classes (SceneSpec().categories())
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


# Class shapes by name, each a predicate on shape-local coordinates (u along the shape's axis, v across;
# a, b its half-extents). The category id of a class is its position in `SceneSpec.classes` plus 1.
def _triangle(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    angles = np.array([0.0, 2.0, 4.0]) * np.pi / 3
    px, py = a * 1.2 * np.cos(angles), b * 1.2 * np.sin(angles)
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        x0, y0, x1, y1 = px[k], py[k], px[(k + 1) % 3], py[(k + 1) % 3]
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def _star_polygon(u: np.ndarray, v: np.ndarray, a: float, b: float, inner: float) -> np.ndarray:
    """Five outer vertices on the ellipse (a, b), joined through inner vertices at radius `inner` (a fraction
    of it) halfway between: a 5-pointed star for inner < cos(pi/5), a pentagon for inner = cos(pi/5)."""
    x, y = u / a, v / b
    r = np.hypot(x, y)
    sector = 2 * np.pi / 5
    gamma = np.abs(np.mod(np.arctan2(y, x) + sector / 2, sector) - sector / 2)  # angle to the nearest outer vertex
    px, py = r * np.cos(gamma), r * np.sin(gamma)
    ix, iy = inner * np.cos(sector / 2), inner * np.sin(sector / 2)
    return (ix - 1.0) * py - iy * (px - 1.0) >= 0  # on the centre's side of the edge (1, 0) -> (ix, iy)


SHAPES = {
    "ellipse": lambda u, v, a, b: (u / a) ** 2 + (v / b) ** 2 <= 1.0,
    "rectangle": lambda u, v, a, b: (np.abs(u) <= a) & (np.abs(v) <= b),
    "triangle": _triangle,
    "cross": lambda u, v, a, b: ((np.abs(u) <= a) & (np.abs(v) <= b / 3)) | ((np.abs(u) <= a / 3) & (np.abs(v) <= b)),
    "diamond": lambda u, v, a, b: np.abs(u) / a + np.abs(v) / b <= 1.0,
    "ring": lambda u, v, a, b: ((u / a) ** 2 + (v / b) ** 2 <= 1.0) & ((u / a) ** 2 + (v / b) ** 2 >= 0.3),
    "star": lambda u, v, a, b: _star_polygon(u, v, a, b, inner=0.45),
    "pentagon": lambda u, v, a, b: _star_polygon(u, v, a, b, inner=float(np.cos(np.pi / 5))),
}


LAYOUTS = ("floating", "ground", "tabletop")


@dataclass(frozen=True)
class SceneSpec:
    """What a generated scene looks like; `PRESETS` names the shipped distributions.

    - `layout`: "floating" = flat objects on their own depth planes in front of a far, receding
      background (every object is clearly nearer than the background); "ground" = objects standing
      on a ground plane below a horizon, each a vertical plane at the ground's depth where it stands,
      so an object's depth meets the ground's along its contact line (depth edges only on the sides
      and top), with a far backdrop above the horizon; "tabletop" = a table plane filling the image,
      depth rising from the bottom row (about 0.8 m) to the top row (about 2.5 m), with flat objects
      lying on it parallel to it, each nearer than what it lies on by its own height (1-4 cm): on the
      table, or on top of the earlier objects it overlaps (clutter; the later one lies on top).
    - `objects`: inclusive range of objects drawn per scene (some may be removed as too hidden).
    - `object_size`: inclusive range of an object's half-extents as a fraction of the image side
      (ground layout: at the bottom row; shrunk by perspective up to 0.4x towards the horizon;
      tabletop: at the bottom row, shrunk up to 0.55x towards the top row and foreshortened vertically).
    - `classes`: shape names from `SHAPES`, category ids 1..len(classes) in this order.
    - `distractors`: inclusive range of shapes painted flat onto the background/ground (no depth of
      their own, not annotated): RGB alone sees them as objects, depth does not.
    - `min_area`: visible pixels an object needs to be kept (None: 0.3 % of the image, at least 12).
    """

    layout: Literal["floating", "ground", "tabletop"] = "floating"
    objects: tuple[int, int] = (2, 5)
    object_size: tuple[float, float] = (0.08, 0.22)
    classes: tuple[str, ...] = ("ellipse", "rectangle", "triangle")
    distractors: tuple[int, int] = (0, 0)
    min_area: Optional[int] = None

    def __post_init__(self) -> None:
        lo, hi = self.objects
        if not 1 <= lo <= hi:
            raise ValueError(f"make-synthetic: objects range must satisfy 1 <= lo <= hi (got {lo}-{hi})")
        lo_s, hi_s = self.object_size
        if not 0.0 < lo_s <= hi_s <= 0.5:
            raise ValueError(f"make-synthetic: object_size must satisfy 0 < lo <= hi <= 0.5 (got {lo_s}-{hi_s})")
        if not 0 <= self.distractors[0] <= self.distractors[1]:
            raise ValueError(f"make-synthetic: distractors range must satisfy 0 <= lo <= hi (got {self.distractors})")
        unknown = [c for c in self.classes if c not in SHAPES]
        if not self.classes or unknown or len(set(self.classes)) != len(self.classes):
            raise ValueError(
                f"make-synthetic: classes must be distinct names from {sorted(SHAPES)} (got {list(self.classes)})"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"make-synthetic: layout must be one of {', '.join(LAYOUTS)} (got {self.layout!r})")
        if self.min_area is not None and self.min_area < 1:
            raise ValueError(f"make-synthetic: min_area must be >= 1 (got {self.min_area})")

    def categories(self) -> list[dict]:
        return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(self.classes)]


PRESETS: dict[str, SceneSpec] = {
    # large floating objects, each on its own depth plane (the project's original scenes; median
    # visible object about 870 px at 128 px)
    "default": SceneSpec(),
    # small objects standing on a ground plane among painted distractors, four classes (at 128 px:
    # visible object area 10th / 50th / 90th percentile about 75 / 250 / 680 px, so many are 8-17 px
    # across), like the held-out scenes on which a random-init Mask R-CNN used depth and the demo recipe did not
    "small": SceneSpec(layout="ground", objects=(2, 7), object_size=(0.035, 0.2),
                       classes=("ellipse", "rectangle", "triangle", "cross"), distractors=(1, 4), min_area=20),
    # clutter on a table seen from above: 6-14 flat objects of widely varying size lying on the table or on
    # each other, a few cm apart in depth (weak depth edges), five classes (three shapes no other preset
    # has), 0-2 distractors. At 128 px (first 1,000 train scenes, seed 0): visible object area 10th / 50th /
    # 90th / 99th percentile about 80 / 270 / 745 / 1,280 px (close to "small"'s), 6 / 10 / 13 objects per
    # scene at the 10th / 50th / 90th percentile (small: 2 / 4 / 7), about 70 % of them touching another.
    # Its purpose: a distribution the project's recipe was not tuned to (configs/demo_clutter.yaml)
    "clutter": SceneSpec(layout="tabletop", objects=(6, 14), object_size=(0.04, 0.3),
                         classes=("ring", "star", "pentagon", "cross", "triangle"), distractors=(0, 2), min_area=20),
}


def parse_range(text: str, kind: type, name: str) -> tuple:
    """'2-7' or '5' (for both ends) -> (lo, hi) of `kind`; a clear error naming the option otherwise."""
    parts = text.split("-") if "-" in text.strip("-") else [text, text]
    try:
        lo, hi = (kind(p) for p in parts)
    except ValueError:
        raise ValueError(f"make-synthetic: --{name} takes LO-HI or one value (got {text!r})") from None
    return lo, hi


def scene_spec(preset: str = "default", **overrides) -> SceneSpec:
    """A preset with some fields replaced (None = keep the preset's)."""
    if preset not in PRESETS:
        raise ValueError(f"make-synthetic: unknown preset {preset!r} (choose from {sorted(PRESETS)})")
    return dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


def _shape_at(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, a: float, b: float,
              theta: float) -> np.ndarray:
    """(S, S) bool coverage of shape `kind` centred at (cy, cx) with half-extents (a, b), rotated by theta."""
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    return SHAPES[kind](u, v, a, b)


def _shape_mask(rng: np.random.Generator, kind: str, yy: np.ndarray, xx: np.ndarray,
                size_range: tuple[float, float] = (0.08, 0.22)) -> np.ndarray:
    """(S, S) bool coverage of one randomly placed, sized and rotated shape of class `kind`."""
    size = yy.shape[0]
    cy, cx = rng.uniform(0.1, 0.9, size=2) * size
    a, b = rng.uniform(*size_range, size=2) * size
    theta = rng.uniform(0, np.pi)
    return _shape_at(kind, yy, xx, cy, cx, a, b, theta)


def _standing_mask(rng: np.random.Generator, kind: str, yy: np.ndarray, xx: np.ndarray, base: float,
                   half: tuple[float, float]) -> np.ndarray:
    """(S, S) bool coverage of an upright shape whose lowest pixel row is `base` (it stands there)."""
    size = yy.shape[0]
    cx = rng.uniform(0.05, 0.95) * size
    theta = np.pi / 2 + rng.uniform(-0.25, 0.25)  # u runs up the image: a is the height, b the width
    a, b = half
    probe = _shape_at(kind, yy, xx, size / 2, cx, a, b, theta)
    rows = np.nonzero(probe.any(axis=1))[0]
    if len(rows) == 0:
        return probe
    return _shape_at(kind, yy, xx, size / 2 + (base - rows.max()), cx, a, b, theta)


def _visible(zbuf: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest surface per pixel and whether any surface covers it."""
    if not len(zbuf):
        return np.zeros((size, size), dtype=np.int64), np.zeros((size, size), dtype=bool)
    return np.argmin(zbuf, axis=0), np.isfinite(zbuf.min(axis=0))


def _compose(rng: np.random.Generator, spec: SceneSpec, size: int, rgb: np.ndarray, back_depth: np.ndarray,
             covers: list[np.ndarray], depths: list[np.ndarray], kinds: np.ndarray, textures: list[np.ndarray]):
    """Occlusion, removal of too-hidden objects, painting, sensor noise: the common end of every layout."""
    min_area = max(12, int(0.003 * size * size)) if spec.min_area is None else spec.min_area
    num = len(covers)
    zbuf = np.where(np.stack(covers), np.stack(depths), np.inf)
    # drop objects whose visible part is tiny; removing one only uncovers others, so one pass suffices
    front, seen = _visible(zbuf, size)
    areas = np.array([(seen & (front == k)).sum() for k in range(num)])
    keep = areas >= min_area
    zbuf = zbuf[keep]
    kinds, textures = kinds[keep], [t for t, k in zip(textures, keep, strict=True) if k]
    front, seen = _visible(zbuf, size)

    masks = np.zeros((len(kinds), size, size), dtype=bool)
    for k in range(len(kinds)):
        masks[k] = seen & (front == k)
    depth = back_depth.copy()
    for k in range(len(kinds)):
        rgb = np.where(masks[k][..., None], textures[k], rgb)
        depth = np.where(masks[k], zbuf[k], depth)
    rgb = rgb + rng.normal(0, 6, size=rgb.shape)  # sensor noise, identical statistics everywhere
    rgb8 = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    depth_mm = np.clip(np.round(depth * 1000), 0, 65535).astype(np.uint16)
    return rgb8, depth_mm, masks, kinds.astype(np.int64)


def _object_texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    colours = PALETTE[rng.choice(len(PALETTE), size=int(rng.integers(2, 4)), replace=False)]
    return _texture(rng, yy, xx, colours)


def _paint_distractors(rng: np.random.Generator, spec: SceneSpec, rgb: np.ndarray, yy: np.ndarray,
                       xx: np.ndarray) -> np.ndarray:
    """Shapes painted flat onto the background: object-like in RGB, absent from depth and labels."""
    if spec.distractors[1] == 0:  # draw nothing, so the default scenes keep their random stream
        return rgb
    for _ in range(int(rng.integers(spec.distractors[0], spec.distractors[1] + 1))):
        kind = spec.classes[int(rng.integers(len(spec.classes)))]
        cover = _shape_mask(rng, kind, yy, xx, spec.object_size)
        rgb = np.where(cover[..., None], _object_texture(rng, yy, xx), rgb)
    return rgb


def _render_floating(rng: np.random.Generator, spec: SceneSpec, size: int):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    # background: a receding plane (top farther), textured with the whole palette
    bg_depth = 9.0 - 3.0 * yy / size + rng.uniform(-0.3, 0.3) * (xx / size - 0.5)
    rgb = _texture(rng, yy, xx, PALETTE)

    num = int(rng.integers(spec.objects[0], spec.objects[1] + 1))
    kinds = rng.integers(1, len(spec.classes) + 1, size=num)
    # distinct depth planes 0.4 m apart (+ jitter), each slightly tilted
    planes = 1.6 + 0.4 * rng.choice(max(9, num), size=num, replace=False) + rng.uniform(-0.1, 0.1, size=num)
    covers, depths, textures = [], [], []
    for k in range(num):
        covers.append(_shape_mask(rng, spec.classes[int(kinds[k]) - 1], yy, xx, spec.object_size))
        gy, gx = rng.uniform(-0.3, 0.3, size=2) / size
        depths.append(planes[k] + gy * (yy - size / 2) + gx * (xx - size / 2))
        textures.append(_object_texture(rng, yy, xx))
    rgb = _paint_distractors(rng, spec, rgb, yy, xx)
    return _compose(rng, spec, size, rgb, bg_depth, covers, depths, kinds, textures)


def _render_ground(rng: np.random.Generator, spec: SceneSpec, size: int):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    horizon = rng.uniform(0.2, 0.4) * size
    far = rng.uniform(9.0, 12.0)  # the backdrop, and the farthest the ground reaches
    near = rng.uniform(1.5, 2.5)  # ground depth at the bottom row
    below = np.maximum(yy - horizon, 1e-3)
    # a flat ground seen from above the horizon: depth ~ 1 / (row - horizon)
    ground_depth = np.minimum(near * (size - horizon) / below, far)
    back_depth = np.where(yy > horizon, ground_depth, far + rng.uniform(-0.2, 0.2) * (xx / size - 0.5))
    rgb = np.where((yy > horizon)[..., None], _texture(rng, yy, xx, PALETTE), _texture(rng, yy, xx, PALETTE))
    rgb = _paint_distractors(rng, spec, rgb, yy, xx)

    num = int(rng.integers(spec.objects[0], spec.objects[1] + 1))
    kinds = rng.integers(1, len(spec.classes) + 1, size=num)
    covers, depths, textures = [], [], []
    for k in range(num):
        # the contact row; nearer the horizon means farther away and smaller (perspective)
        base = rng.uniform(horizon + 0.15 * (size - horizon), size - 1)
        scale = 0.4 + 0.6 * (base - horizon) / (size - horizon)
        half = tuple(rng.uniform(*spec.object_size, size=2) * size * scale)
        cover = _standing_mask(rng, spec.classes[int(kinds[k]) - 1], yy, xx, base, half)
        covers.append(cover)
        # a vertical plane at the ground's depth along its lowest row: continuous with the ground there
        rows = np.nonzero(cover.any(axis=1))[0]
        row = int(rows.max()) if len(rows) else size - 1
        depths.append(np.full((size, size), ground_depth[row, 0], dtype=np.float32))
        textures.append(_object_texture(rng, yy, xx))
    return _compose(rng, spec, size, rgb, back_depth, covers, depths, kinds, textures)


def _table_depth(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A table plane seen obliquely from above: inverse depth linear in the row (perspective), from `near`
    at the bottom row to `far` at the top (in the middle column), rolled sideways by up to +-5 %."""
    size = yy.shape[0]
    near, far = rng.uniform(0.7, 0.9), rng.uniform(2.2, 2.8)
    t = (yy - 0.5) / (size - 1)  # 0 at the top row, 1 at the bottom
    roll = 1.0 + rng.uniform(-0.1, 0.1) * (xx / size - 0.5)
    return 1.0 / ((1.0 / far + (1.0 / near - 1.0 / far) * t) * roll)


def _lying_mask(rng: np.random.Generator, kind: str, yy: np.ndarray, xx: np.ndarray,
                size_range: tuple[float, float], squash: float) -> np.ndarray:
    """(S, S) bool coverage of a flat shape lying on the table: smaller towards the top row (farther)
    and compressed vertically by `squash` (the table is seen obliquely)."""
    size = yy.shape[0]
    cy, cx = rng.uniform(0.05, 0.95, size=2) * size
    scale = 0.55 + 0.45 * cy / size
    a, b = rng.uniform(*size_range, size=2) * size * scale
    return _shape_at(kind, cy + (yy - cy) / squash, xx, cy, cx, a, b, rng.uniform(0, np.pi))


def _render_tabletop(rng: np.random.Generator, spec: SceneSpec, size: int):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    table = _table_depth(rng, yy, xx)
    rgb = _paint_distractors(rng, spec, _texture(rng, yy, xx, PALETTE), yy, xx)
    squash = rng.uniform(0.6, 0.85)

    num = int(rng.integers(spec.objects[0], spec.objects[1] + 1))
    kinds = rng.integers(1, len(spec.classes) + 1, size=num)
    covers, lifts, textures = [], [], []
    for k in range(num):
        cover = _lying_mask(rng, spec.classes[int(kinds[k]) - 1], yy, xx, spec.object_size, squash)
        # on top of the highest earlier object it overlaps (or the table), by its own height
        below = [lift for c, lift in zip(covers, lifts, strict=True) if (c & cover).any()]
        lifts.append(max(below, default=0.0) + rng.uniform(0.01, 0.04))
        covers.append(cover)
        textures.append(_object_texture(rng, yy, xx))
    depths = [table - lift for lift in lifts]  # parallel to the table
    return _compose(rng, spec, size, rgb, table, covers, depths, kinds, textures)


def render_scene(rng: np.random.Generator, size: int = 128, min_area: int | None = None,
                 spec: SceneSpec | None = None):
    """One scene: (rgb (S,S,3) uint8, depth_mm (S,S) uint16, masks (N,S,S) bool, labels (N,) category ids)."""
    spec = spec or PRESETS["default"]
    if min_area is not None:
        spec = dataclasses.replace(spec, min_area=min_area)
    if spec.layout == "ground":
        return _render_ground(rng, spec, size)
    if spec.layout == "tabletop":
        return _render_tabletop(rng, spec, size)
    return _render_floating(rng, spec, size)


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


def generate_split(out_dir: Path, split: str, num: int, size: int, seed: int, first_image_id: int,
                   spec: SceneSpec | None = None) -> dict:
    """Write `num` images + depth maps of `split` under `out_dir`; return the split's COCO dict."""
    spec = spec or PRESETS["default"]
    img_dir, depth_dir = out_dir / "images" / split, out_dir / "depth"
    img_dir.mkdir(parents=True, exist_ok=True)
    depth_dir.mkdir(parents=True, exist_ok=True)
    # image_id * stride + k is unique across both splits (stride 10 for up to 9 objects per image)
    stride = 10 ** len(str(spec.objects[1]))
    images, anns = [], []
    for i in tqdm(range(num), desc=f"synthetic {split}", leave=False, disable=num < 200):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        rgb, depth_mm, masks, labels = render_scene(rng, size, spec=spec)
        stem = f"{split}_{i:06d}"
        Image.fromarray(rgb, mode="RGB").save(img_dir / f"{stem}.png")
        Image.fromarray(depth_mm).save(depth_dir / f"{stem}.png")
        image_id = first_image_id + i
        images.append({"id": image_id, "file_name": f"{stem}.png", "height": size, "width": size})
        anns.extend(_annotations(masks, labels, image_id, first_ann_id=image_id * stride))
    return {"images": images, "annotations": anns, "categories": spec.categories()}


def generate_dataset(out_dir: Path, num_train: int = 1000, num_val: int = 200, size: int = 128, seed: int = 0,
                     spec: SceneSpec | None = None) -> str:
    """Write the whole dataset (see the module docstring for the layout); return a one-line summary."""
    spec = spec or PRESETS["default"]
    if num_train < 1 or num_val < 0 or size < 16:
        raise ValueError(
            f"make-synthetic: need num_train >= 1, num_val >= 0, size >= 16 (got {num_train}, {num_val}, {size})"
        )
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    info = {"description": "dgseg make-synthetic", "size": size, "seed": seed,
            "scene": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}}
    counts, areas = [], []
    for split, num, first in (("train", num_train, 1), ("val", num_val, num_train + 1)):
        coco = generate_split(out_dir, split, num, size, seed, first_image_id=first, spec=spec)
        with open(out_dir / "annotations" / f"{split}.json", "w") as f:
            json.dump({"info": info, **coco}, f)
        counts.append(f"{split}: {num} images, {len(coco['annotations'])} instances")
        areas.extend(a["area"] for a in coco["annotations"])
    median = f"median object {int(np.median(areas))} px" if areas else "no objects"
    return f"wrote {out_dir} ({'; '.join(counts)}; {size}x{size}, seed {seed}, {median}, depth in mm)"
