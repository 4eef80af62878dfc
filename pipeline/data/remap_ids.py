"""Give image ids that are unique across several COCO JSONs / image lists (`cli.py remap-ids`).

Converted datasets often number every split from 1, so a train and a val JSON share ids; the
depth cache and training key images by id, so each id must name one image across every file
that shares a cache root. Ids are kept where they are still free (so the first file, usually
train, keeps all of its ids and the cache entries already computed for it); a repeated id gets
the next integer above every id seen. Annotations follow their image. New files are written to
another folder (the inputs are never changed) with `id_map.json`: for every input, its output
and the ids that changed (`old -> new`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgseg.pipeline.data.coco import DataError, check_images, read_json

MAP_NAME = "id_map.json"


@dataclass
class RemapResult:
    outputs: list[Path]
    map_path: Path
    changed: dict[str, dict[int, int]]  # input path -> {old id: new id}


def _read(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f'{path}: expected a JSON object with an "images" list')
    images = check_images(data.get("images"), path, None)  # unique ids within the file, required fields
    bad = [r["id"] for r in images if isinstance(r["id"], bool) or not isinstance(r["id"], int)]
    if bad:
        raise DataError(f"{path}: image ids must be integers (COCO), got {bad[:5]}")
    return data


def remap_ids(inputs: list[Path], out_dir: Path) -> RemapResult:
    """Write each input to `out_dir/<its name>` with ids unique across all inputs; returns what was written."""
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise DataError("remap-ids: give at least one JSON")
    out_dir = Path(out_dir)
    names = [p.name for p in inputs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"remap-ids: several inputs are named {', '.join(repeated)}; the outputs in {out_dir} "
                        "would overwrite each other (rename one input, or remap them into separate runs)")
    outputs = [out_dir / p.name for p in inputs]
    clash = [str(p) for p, o in zip(inputs, outputs, strict=True) if o.resolve() == p.resolve()]
    if clash:
        raise DataError(f"remap-ids: the output would overwrite the input {', '.join(clash)}; choose another --out")
    files = [_read(p) for p in inputs]  # read (and check) everything before writing anything
    next_free = 1 + max(r["id"] for data in files for r in data["images"])
    used: set[int] = set()
    changed: dict[str, dict[int, int]] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, out, data in zip(inputs, outputs, files, strict=True):
        mapping: dict[int, int] = {}
        for rec in data["images"]:
            if rec["id"] in used:
                mapping[rec["id"]] = next_free
                next_free += 1
            used.add(mapping.get(rec["id"], rec["id"]))
        new = dict(data)
        new["images"] = [{**r, "id": mapping.get(r["id"], r["id"])} for r in data["images"]]
        if isinstance(data.get("annotations"), list):
            new["annotations"] = [
                {**a, "image_id": mapping.get(a["image_id"], a["image_id"])} if isinstance(a, dict) else a
                for a in data["annotations"]
            ]
        with open(out, "w", encoding="utf-8") as f:
            json.dump(new, f)
        changed[str(path)] = mapping
    map_path = out_dir / MAP_NAME
    record = {str(p): {"output": str(o), "changed": {str(k): v for k, v in changed[str(p)].items()}}
              for p, o in zip(inputs, outputs, strict=True)}
    map_path.write_text(json.dumps(record, indent=1))
    return RemapResult(outputs, map_path, changed)
