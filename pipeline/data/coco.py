"""COCO instance annotations and the unlabelled image lists, read and checked at load time.

`load_coco` reads a COCO JSON (polygon, uncompressed-RLE and compressed-RLE segmentations,
decoded with pycocotools) and checks it before anything trains: malformed JSON, an annotation
pointing at an unknown image or category, an empty image list, image files missing from
`image_dir` or a `file_name` leading outside it (`..`, absolute, a symlink out) -- each a
`DataError` naming the file, the entry and the problem.

`iscrowd` annotations are kept (splits copy them; COCOeval uses them to ignore crowd regions),
but they are not training instances: `CocoData.instances` leaves them out, and their pixels are
not marked as ignored (as in Mask2Former's dataset mapper).

The unlabelled image list written by `make-splits` is `{"images": [{id, file_name, height,
width}, ...]}`, the same image records as COCO; `load_image_list` reads it with the same checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from dgseg.depth_cache.images import UnsafePathError, resolve_in_folder
from pycocotools import mask as mask_utils

MAX_LISTED = 20  # ids / files named in an error message


class DataError(ValueError):
    """Bad input data: the message names the file and the problem."""


def read_json(path: Path) -> Any:
    """json.load with errors that name the file (missing, unreadable, malformed)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON ({err.msg} at line {err.lineno}, column {err.colno})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({err})") from err


def _listing(items: list, total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(str(x) for x in items[:MAX_LISTED])
    return f"{total} ({shown}{', ...' if total > MAX_LISTED else ''})"


def image_path(image_dir: Path, rec: dict, source: Path, index: int | None = None,
               allow_symlinks: bool = False) -> Path:
    """The file of image record `rec` of `source`, refused (DataError naming the JSON and the entry) when
    its file_name leads outside `image_dir` (`..`, absolute, or a symlink out unless allowed)."""
    entry = f"images[{index}] (id {rec.get('id')})" if index is not None else f"image {rec.get('id')}"
    where = f"{source}: {entry}"
    try:
        return resolve_in_folder(image_dir, rec["file_name"], where=where, allow_symlinks=allow_symlinks)
    except UnsafePathError as err:
        raise DataError(str(err)) from err


def check_images(images: Any, path: Path, image_dir: Path | None, allow_symlinks: bool = False) -> list[dict]:
    """Validate image records (non-empty, fields, unique ids) and, given `image_dir`, that every file is
    inside it and exists."""
    if not isinstance(images, list) or not images:
        raise DataError(f"{path}: empty or missing 'images' list (an empty split?)")
    seen: set = set()
    for rec in images:
        missing = [k for k in ("id", "file_name", "height", "width") if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise DataError(f"{path}: image record {rec!r:.120} lacks {', '.join(missing)}")
        if rec["id"] in seen:
            raise DataError(f"{path}: duplicate image id {rec['id']}")
        seen.add(rec["id"])
    if image_dir is not None:
        files = [image_path(Path(image_dir), r, path, i, allow_symlinks) for i, r in enumerate(images)]
        absent = [r["file_name"] for r, f in zip(images, files, strict=True) if not f.is_file()]
        if absent:
            raise DataError(f"{path}: {_listing(absent)} image files are missing from {image_dir}")
    return images


@dataclass
class CocoData:
    """A checked COCO file. `index_of[category_id]` -> contiguous class 0..K-1 (categories sorted by id)."""

    path: Path
    images: list[dict]
    categories: list[dict]
    anns_by_image: dict[Any, list[dict]] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)  # the whole JSON, for writing subsets

    @property
    def category_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]

    @property
    def index_of(self) -> dict[int, int]:
        return {cid: i for i, cid in enumerate(self.category_ids)}

    def instances(self, image_id: Any) -> list[dict]:
        """Training instances of one image: its non-crowd annotations."""
        return [a for a in self.anns_by_image.get(image_id, []) if not a.get("iscrowd", 0)]


def load_coco(path: Path, image_dir: Path | None = None, allow_symlinks: bool = False) -> CocoData:
    """Read and check a COCO instance file; with `image_dir`, also check that every image file is inside
    it and exists."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object with images/annotations/categories")
    images = check_images(data.get("images"), path, image_dir, allow_symlinks)
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats or not all(isinstance(c, dict) and "id" in c for c in cats):
        raise DataError(f"{path}: missing or empty 'categories' list (each needs an 'id')")
    cats = sorted(cats, key=lambda c: c["id"])
    if len({c["id"] for c in cats}) != len(cats):
        raise DataError(f"{path}: duplicate category ids")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{path}: 'annotations' must be a list")
    image_ids, cat_ids = {r["id"] for r in images}, {c["id"] for c in cats}
    by_image: dict[Any, list[dict]] = {}
    unknown_img, unknown_cat = [], []
    for a in anns:
        if not isinstance(a, dict) or "image_id" not in a or "segmentation" not in a or "category_id" not in a:
            raise DataError(f"{path}: annotation {a!r:.120} lacks image_id, category_id or segmentation")
        if a["image_id"] not in image_ids:
            unknown_img.append(a.get("id", "?"))
        elif a["category_id"] not in cat_ids:
            unknown_cat.append(a.get("id", "?"))
        else:
            by_image.setdefault(a["image_id"], []).append(a)
    if unknown_img:
        raise DataError(f"{path}: {_listing(unknown_img)} annotations point at unknown image ids")
    if unknown_cat:
        raise DataError(f"{path}: {_listing(unknown_cat)} annotations have unknown category ids")
    return CocoData(path=path, images=images, categories=cats, anns_by_image=by_image, raw=data)


def load_image_list(path: Path, image_dir: Path | None = None, allow_symlinks: bool = False) -> list[dict]:
    """Read and check an unlabelled image list `{"images": [...]}`."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f'{path}: expected an object {{"images": [...]}}')
    return check_images(data.get("images"), path, image_dir, allow_symlinks)


def write_image_list(path: Path, images: list[dict]) -> None:
    """Write an unlabelled image list (image records only)."""
    keep = ("id", "file_name", "height", "width")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"images": [{k: r[k] for k in keep} for r in images]}, f)


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a polygon list, an uncompressed RLE (counts list) or a compressed RLE."""
    if isinstance(segm, list):  # polygons: one object may have several parts
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)):
        rle = dict(segm)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise DataError(f"unsupported segmentation {segm!r:.80}")
    mask = mask_utils.decode(rle)
    if mask.shape[:2] != (height, width):
        raise DataError(f"segmentation of size {mask.shape[:2]} on a {height}x{width} image")
    return mask.astype(bool)


def instance_masks(coco: CocoData, image: dict) -> tuple[np.ndarray, np.ndarray]:
    """(masks (N, H, W) bool, labels (N,) int64 contiguous) of one image's training instances."""
    h, w = image["height"], image["width"]
    anns = coco.instances(image["id"])
    masks = np.zeros((len(anns), h, w), dtype=bool)
    for k, a in enumerate(anns):
        try:
            masks[k] = decode_segmentation(a["segmentation"], h, w)
        except DataError as err:
            raise DataError(f"{coco.path}: annotation {a.get('id', '?')} of image {image['id']}: {err}") from err
    index = coco.index_of
    labels = np.array([index[a["category_id"]] for a in anns], dtype=np.int64)
    return masks, labels
