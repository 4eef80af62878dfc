"""Cityscapes `gtFine` instance PNGs -> COCO instance JSON with the 8 instance classes.

Reads `<root>/gtFine/<split>/<city>/<name>_gtFine_instanceIds.png`, where a pixel holds
`class_id * 1000 + k` for an instance of an instance class and a plain label id (< 1000)
elsewhere. Every such instance becomes an annotation (compressed RLE, area, bbox) with the
Cityscapes label id as its category id. A region of an instance class without instance ids
(value < 1000, e.g. a car group) becomes one `iscrowd: 1` annotation per class, as in
detectron2's converter, so COCOeval ignores it and training skips it.
Images are `<root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`; `file_name` is
relative to `<root>/leftImg8bit/<split>` (use that folder as the config's image_dir).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from dgseg.pipeline.data.coco import MAX_LISTED
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

INSTANCE_CLASSES = {24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus", 31: "train", 32: "motorcycle",
                    33: "bicycle"}  # fmt: skip
SUFFIX = "_gtFine_instanceIds.png"


def _annotation(mask: np.ndarray, ann_id: int, image_id: int, category_id: int, crowd: bool) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": int(mask_utils.area(rle)),
        "bbox": [float(x) for x in mask_utils.toBbox(rle)],
        "iscrowd": int(crowd),
    }


def image_annotations(ids: np.ndarray, image_id: int, first_ann_id: int) -> list[dict]:
    """Annotations of one `instanceIds` array (H, W) int."""
    anns = []
    for value in np.unique(ids):
        value = int(value)
        cls, crowd = (value // 1000, False) if value >= 1000 else (value, True)
        if cls not in INSTANCE_CLASSES:
            continue
        anns.append(_annotation(ids == value, first_ann_id + len(anns), image_id, cls, crowd))
    return anns


def convert(root: Path, split: str, out_json: Path) -> str:
    """Write the COCO JSON of one split; return a one-line summary. Raises ValueError on bad layout."""
    root = Path(root)
    gt_dir, img_dir = root / "gtFine" / split, root / "leftImg8bit" / split
    files = sorted(gt_dir.glob(f"*/*{SUFFIX}"))
    if not files:
        raise ValueError(f"{gt_dir}: no */*{SUFFIX} files (is --root the Cityscapes root, --split right?)")
    rel_images = [f"{f.parent.name}/{f.name[: -len(SUFFIX)]}_leftImg8bit.png" for f in files]
    absent = [r for r in rel_images if not (img_dir / r).is_file()]
    if absent:
        shown = ", ".join(absent[:MAX_LISTED])
        raise ValueError(f"{img_dir}: {len(absent)} images of {gt_dir} are missing ({shown})")
    images, anns = [], []
    for image_id, (path, rel) in enumerate(tqdm(list(zip(files, rel_images, strict=True)), desc=split), start=1):
        try:
            ids = np.asarray(Image.open(path), dtype=np.int64)
        except OSError as err:
            raise ValueError(f"{path}: unreadable instance PNG ({err})") from err
        if ids.ndim != 2:
            raise ValueError(f"{path}: expected a single-channel instance id image, got shape {ids.shape}")
        images.append({"id": image_id, "file_name": rel, "height": ids.shape[0], "width": ids.shape[1]})
        anns.extend(image_annotations(ids, image_id, first_ann_id=len(anns) + 1))
    categories = [{"id": cid, "name": name, "supercategory": "cityscapes"} for cid, name in INSTANCE_CLASSES.items()]
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    crowd = sum(a["iscrowd"] for a in anns)
    return f"wrote {out_json}: {len(images)} images, {len(anns) - crowd} instances, {crowd} crowd regions"
