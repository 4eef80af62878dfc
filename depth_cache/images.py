"""The images a precompute job covers, and their decoding in DataLoader workers.

Inputs: a COCO JSON or an unlabelled list from `make-splits` (both: `{"images": [{id, file_name,
height, width, ...}]}`, ids become `str(id)`) with their image folder, or a bare image folder
(ids: `content_id`, the first 16 hex digits of the file's sha256, so the id survives renames).
Read with plain json: stage one never imports stage two.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageRecord:
    """One image: its cache id, its file, and its size (H, W) when the JSON gives it."""

    id: str
    path: str
    size: tuple[int, int] | None = None

    @property
    def stem(self) -> str:
        return Path(self.path).stem


def content_id(path: str | Path) -> str:
    """Cache id of an image from a bare folder: first 16 hex digits of the file's sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def records_from_json(json_path: str | Path, image_dir: str | Path) -> list[ImageRecord]:
    """Records of a COCO JSON or an image list (`{"images": [...]}`); errors name the file."""
    json_path = Path(json_path)
    try:
        with open(json_path, encoding="utf-8") as f:
            data: Any = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{json_path}: cannot read image list: {err}") from err
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{json_path}: expected a JSON object with an `images` list")
    out = []
    for i, rec in enumerate(images):
        if not isinstance(rec, dict) or "id" not in rec or "file_name" not in rec:
            raise ValueError(f"{json_path}: images[{i}] lacks `id` or `file_name`")
        size = (int(rec["height"]), int(rec["width"])) if "height" in rec and "width" in rec else None
        out.append(ImageRecord(str(rec["id"]), str(Path(image_dir) / rec["file_name"]), size))
    return out


def records_from_folder(folder: str | Path) -> list[ImageRecord]:
    """Records of every image file in `folder` (sorted by name), ids by content hash."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [ImageRecord(content_id(p), str(p)) for p in files]


def merge_records(groups: list[list[ImageRecord]]) -> list[ImageRecord]:
    """Concatenate, dropping repeats; one id naming two different files is an error."""
    seen: dict[str, ImageRecord] = {}
    for group in groups:
        for r in group:
            old = seen.get(r.id)
            if old is None:
                seen[r.id] = r
            elif Path(old.path).resolve() != Path(r.path).resolve():
                raise ValueError(f"image id {r.id} names two files: {old.path} and {r.path} (two JSONs that "
                                 "number their images alike, e.g. train and val both from 1? `python cli.py "
                                 "remap-ids TRAIN.json VAL.json --out DIR` writes copies with unique ids)")
    return list(seen.values())


def decode_image(path: str) -> torch.Tensor:
    """(3, H, W) uint8 RGB; raises OSError/ValueError naming the file for unreadable images."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except Exception as err:  # PIL raises many types for corrupt files
        raise OSError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def image_size(path: str) -> tuple[int, int]:
    """(H, W) from the header only."""
    with Image.open(path) as im:
        return im.height, im.width


class LoadDataset(torch.utils.data.Dataset):
    """Items `(shard, slot, record)` -> dict with the loaded input (`load(record)`) or the error.

    Runs in DataLoader workers; a failing image becomes {"error": message}, never an exception,
    so one corrupt file cannot stop the job."""

    def __init__(self, items: list[tuple[int, int, ImageRecord]], load):
        self.items, self.load = items, load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        shard, slot, record = self.items[i]
        out: dict[str, Any] = {"shard": shard, "slot": slot, "record": record}
        try:
            out["input"] = self.load(record)
        except Exception as err:  # bad input is reported, not fatal
            out["error"] = str(err) or type(err).__name__
        return out
