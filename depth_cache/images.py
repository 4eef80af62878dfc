"""The images a precompute job covers, and the one way every stage resolves and decodes an image file.

Inputs: a COCO JSON or an unlabelled list from `make-splits` (both: `{"images": [{id, file_name,
height, width, ...}]}`, ids become `str(id)`) with their image folder, or a bare image folder
(ids: `content_id`, the first 16 hex digits of the file's sha256, so the id survives renames).
Read with plain json: stage one never imports stage two.

`resolve_in_folder` is the one check that a listed name stays inside its folder (no `..`, no
absolute name, no symlink out of it unless allowed); `decode_rgb` is the one decoder (precompute,
training and predict): EXIF orientation applied, 16-bit scaled by its range, CMYK and palette
converted, transparency composited onto white.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dgseg.depth_cache.fingerprint import fingerprint
from PIL import Image, ImageOps

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


class UnsafePathError(ValueError):
    """A listed file name that resolves outside the folder it belongs to."""


def resolve_in_folder(folder: str | Path, name: str, *, where: str, allow_symlinks: bool = False) -> Path:
    """`folder/name`, refused when `name` is absolute, climbs out with `..`, or (unless
    `allow_symlinks`) is or passes through a symlink leading outside `folder`. `where` names the
    list and entry for the error (e.g. `train.json: images[3] (id 7)`)."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"{where}: file_name {name!r} is not a file name")
    rel = Path(name)
    if rel.is_absolute() or rel.drive:
        raise UnsafePathError(f"{where}: file_name {name!r} is absolute; names are relative to {folder}")
    if ".." in rel.parts:
        # lexical check first: `a/../b` could be harmless, but no dataset needs it and it hides escapes
        raise UnsafePathError(f"{where}: file_name {name!r} contains '..' (it must stay inside {folder})")
    path = folder / rel
    # only the name's own components can lead out (the folder's symlinks resolve on both sides), so the
    # full resolution runs only when one of them is a link: one lstat per component, not per path
    if not allow_symlinks and any(os.path.islink(folder.joinpath(*rel.parts[: k + 1])) for k in range(len(rel.parts))):
        base = os.path.realpath(folder)
        real = os.path.realpath(path)
        if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
            raise UnsafePathError(
                f"{where}: file_name {name!r} is a symlink to {real}, outside {folder} "
                "(allow it with data.allow_symlinks_outside=true / --allow-symlinks-outside)"
            )
    return path


def records_from_json(json_path: str | Path, image_dir: str | Path, allow_symlinks: bool = False) -> list[ImageRecord]:
    """Records of a COCO JSON or an image list (`{"images": [...]}`); errors name the file and entry."""
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
        where = f"{json_path}: images[{i}] (id {rec['id']})"
        path = resolve_in_folder(image_dir, rec["file_name"], where=where, allow_symlinks=allow_symlinks)
        out.append(ImageRecord(str(rec["id"]), str(path), size))
    return out


def list_image_files(folder: str | Path, allow_symlinks: bool = False) -> list[Path]:
    """The image files of a bare folder, sorted by name; a symlink out of it is refused (unless allowed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder not found: {folder}")
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [resolve_in_folder(folder, n, where=f"{folder}: {n}", allow_symlinks=allow_symlinks) for n in names]


def records_from_folder(folder: str | Path, allow_symlinks: bool = False) -> list[ImageRecord]:
    """Records of every image file in `folder` (sorted by name), ids by content hash."""
    return [ImageRecord(content_id(p), str(p)) for p in list_image_files(folder, allow_symlinks)]


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


# 16-bit modes PIL gives grayscale PNG/TIFF ("I" is how some versions load a 16-bit PNG)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb_array(im: Image.Image, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 as a viewer shows the image: EXIF orientation applied; high bit depth scaled
    by its type's range (16 bit: /257, not clipped to 255 as `convert("RGB")` does); CMYK and
    palette converted; transparent pixels composited onto white (the colour under alpha 0 is often
    arbitrary). Float images have no defined range and are refused."""
    im = ImageOps.exif_transpose(im) or im
    mode = im.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        arr = np.asarray(im).astype(np.int64)
        if mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"{name}: 32-bit integer image with values {arr.min()}..{arr.max()}; "
                             "expected 8 or 16 bit")  # fmt: skip
        gray = ((arr + 128) // 257).astype(np.uint8)  # round(v * 255 / 65535)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        raise ValueError(f"{name}: 32-bit float image has no defined value range; save it as 8 or 16 bit")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def decode_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 of an image file (see `to_rgb_array`); raises OSError naming the file."""
    try:
        with Image.open(path) as im:
            return np.array(to_rgb_array(im, str(path)), copy=True)  # writable, owns its memory
    except Exception as err:  # PIL raises many types for corrupt files
        raise OSError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err


def decode_image(path: str) -> torch.Tensor:
    """(3, H, W) uint8 RGB; raises OSError naming the file for unreadable images."""
    return torch.from_numpy(decode_rgb(path)).permute(2, 0, 1).contiguous()


def image_size(path: str) -> tuple[int, int]:
    """(H, W) as decoded (EXIF orientation applied), from the header only."""
    with Image.open(path) as im:
        orientation = im.getexif().get(0x0112, 1)
        # orientations 5-8 swap width and height (exif_transpose rotates by 90 or 270 degrees)
        return (im.width, im.height) if orientation in (5, 6, 7, 8) else (im.height, im.width)


class LoadDataset(torch.utils.data.Dataset):
    """Items `(shard, slot, record)` -> dict with the loaded input (`load(record)`) or the error.

    Runs in DataLoader workers; a failing image becomes {"error": message}, never an exception,
    so one corrupt file cannot stop the job. `source` is the fingerprint of the image file the
    entry is bound to (`fingerprint.py`), taken in the worker while the file is in the page cache;
    `index` is the item's position (the claiming sampler assigns shard and slot by it)."""

    def __init__(self, items: list[tuple[int, int, ImageRecord]], load):
        self.items, self.load = items, load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        shard, slot, record = self.items[i]
        out: dict[str, Any] = {"shard": shard, "slot": slot, "record": record, "index": i}
        try:
            out["input"] = self.load(record)
            # no image file is fine for `files` (the map gives the size); then nothing to bind to
            out["source"] = fingerprint(record.path) if os.path.isfile(record.path) else None
        except Exception as err:  # bad input is reported, not fatal
            out["error"] = str(err) or type(err).__name__
        return out
