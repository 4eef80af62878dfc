"""Per-image predictions to COCO results format (RLE masks), and back to/from JSON.

A prediction, as `pipeline.model.postprocess` returns it for one image, is
`{"masks": (N, H, W) bool at the original image size, "scores": (N,) float,
"labels": (N,) int64 contiguous class index 0..K-1, "boxes": (N, 4) xyxy}`; tensors or
numpy arrays, on any device. A COCO result is one dict per instance:
`{"image_id": int, "category_id": int, "segmentation": {"size": [H, W], "counts": str},
"score": float, "bbox": [x, y, w, h]}` -- the format every COCO tool reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

_RESULT_KEYS = ("image_id", "category_id", "segmentation", "score")


def contiguous_category_ids(coco: COCO) -> list[int]:
    """COCO category id of each contiguous class index: `ids[k]` for class k.

    The datasets map category ids to 0..K-1 in sorted category-id order; this is the inverse.
    """
    return sorted(coco.getCatIds())


def category_names(coco: COCO) -> list[str]:
    """Category name of each contiguous class index (same order as `contiguous_category_ids`)."""
    return [coco.cats[cid]["name"] for cid in contiguous_category_ids(coco)]


def coco_image_id(image_id: int | str) -> int:
    """The integer COCO image id of a pipeline image id (stage two passes `str(image_id)`)."""
    if isinstance(image_id, (int, np.integer)):
        return int(image_id)
    if isinstance(image_id, torch.Tensor) and image_id.numel() == 1:
        return int(image_id.item())
    if isinstance(image_id, str) and image_id.strip().lstrip("-").isdigit():
        return int(image_id)
    raise ValueError(
        f"image id {image_id!r} is not a COCO image id (an integer or its string form); "
        "COCO evaluation needs the annotation file's integer ids"
    )


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def encode_masks(masks: Any) -> list[dict]:
    """RLE-encode binary masks `(N, H, W)` in one pycocotools call; counts are JSON-safe `str`."""
    if not isinstance(masks, torch.Tensor):
        masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    # pycocotools reads (H, W, N) column-major uint8, i.e. each mask stored column by column:
    # that is the C-ordered (N, W, H) array seen transposed. Transposing each mask (on its
    # accelerator, for a GPU tensor) is faster than numpy's strided copy to Fortran order
    # (and numpy transposes uint8 faster than torch does on the CPU).
    if isinstance(masks, torch.Tensor) and masks.device.type != "cpu":
        cols = masks.detach().transpose(1, 2).to(torch.uint8).contiguous().cpu().numpy()
    else:
        cols = np.ascontiguousarray(_numpy(masks).transpose(0, 2, 1), dtype=np.uint8)
    rles = mask_util.encode(cols.transpose(2, 1, 0))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_masks(rles: Sequence[dict]) -> np.ndarray:
    """Inverse of `encode_masks`: `(N, H, W)` bool (str or bytes counts both accepted)."""
    if len(rles) == 0:
        raise ValueError("decode_masks needs at least one RLE (the image size is unknown otherwise)")
    fixed = [{"size": list(r["size"]), "counts": _as_bytes(r["counts"])} for r in rles]
    return mask_util.decode(fixed).transpose(2, 0, 1).astype(bool)


def _as_bytes(counts: str | bytes) -> bytes:
    return counts.encode("ascii") if isinstance(counts, str) else counts


def prediction_to_results(
    image_id: int | str,
    prediction: Mapping[str, Any],
    category_ids: Sequence[int],
    *,
    score_threshold: float = 0.0,
    max_detections: int | None = None,
) -> list[dict]:
    """COCO results of one image's prediction.

    Keeps instances with `score >= score_threshold`, then the `max_detections` best. The bbox is
    the prediction's `boxes` (xyxy -> xywh) when given, else the mask's tight box.
    """
    img_id = coco_image_id(image_id)
    scores = _numpy(prediction["scores"]).astype(np.float64).reshape(-1)
    labels = _numpy(prediction["labels"]).astype(np.int64).reshape(-1)
    masks = prediction["masks"]
    if not isinstance(masks, torch.Tensor):
        masks = np.asarray(masks)
    n = scores.shape[0]
    if labels.shape[0] != n or masks.shape[0] != n:
        raise ValueError(
            f"image {image_id}: prediction has {n} scores, {labels.shape[0]} labels and {masks.shape[0]} masks"
        )
    if n and (labels.min() < 0 or labels.max() >= len(category_ids)):
        raise ValueError(
            f"image {image_id}: labels must be contiguous class indices 0..{len(category_ids) - 1}, "
            f"got range {labels.min()}..{labels.max()}"
        )
    keep = np.nonzero(scores >= score_threshold)[0]
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    if max_detections is not None:
        keep = keep[:max_detections]
    if keep.size == 0:
        return []
    # Encode in the original order (no copy when every instance is kept), then rank by score.
    chosen = np.sort(keep)
    if chosen.size < n:
        masks = masks[torch.from_numpy(chosen).to(masks.device) if isinstance(masks, torch.Tensor) else chosen]
    encoded = encode_masks(masks)
    rles = [encoded[i] for i in np.searchsorted(chosen, keep)]
    if prediction.get("boxes") is not None:
        xyxy = _numpy(prediction["boxes"]).astype(np.float64)[keep]
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    else:
        xywh = mask_util.toBbox([{"size": r["size"], "counts": _as_bytes(r["counts"])} for r in rles])
    cats = np.asarray(category_ids, dtype=np.int64)[labels[keep]]
    return [
        {
            "image_id": img_id,
            "category_id": int(cats[i]),
            "segmentation": rles[i],
            "score": float(scores[k]),
            "bbox": [float(v) for v in xywh[i]],
        }
        for i, k in enumerate(keep)
    ]


def save_results(results: Sequence[dict], path: str | Path) -> Path:
    """Write COCO results as a JSON list (readable by `COCO.loadRes` and any COCO tool)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(list(results), f)
    tmp.replace(path)  # never leave a half-written results file behind
    return path


def load_results(path: str | Path) -> list[dict]:
    """Read and check a COCO results JSON file (a list of result dicts)."""
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: results file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: COCO results must be a JSON list of objects, got {type(data).__name__}")
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: result {i} is {type(r).__name__}, not an object")
        missing = [k for k in _RESULT_KEYS if k not in r]
        if missing:
            raise ValueError(f"{path}: result {i} lacks {missing}")
        seg = r["segmentation"]
        if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
            raise ValueError(f"{path}: result {i} segmentation must be an RLE with 'size' and 'counts'")
        if not (isinstance(r["score"], (int, float)) and math.isfinite(r["score"])):
            raise ValueError(f"{path}: result {i} has a non-finite score {r['score']!r}")
    return data
