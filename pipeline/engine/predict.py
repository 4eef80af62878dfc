"""`cli.py predict`: segment new images with a `Predictor`, draw the masks, write COCO results.

Into the output folder: `<stem>.png` per image (instances scoring at least the threshold drawn
over it), `results.json` (COCO results of those instances, as `evaluate` writes them: the
dataset's category ids, RLE segmentation, score, bbox, plus the image's `file_name`) and
`summary.json` (per image: file, image id, instances kept, best score, and a note when none
passed the threshold, which is also printed).
"""

from __future__ import annotations

import json
from pathlib import Path

from dgseg.pipeline.config import Config
from dgseg.pipeline.engine.predictor import Predictor
from tqdm import tqdm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: list[Path]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted)."""
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"predict: no such image or folder: {p}")
    if not out:
        raise FileNotFoundError(f"predict: no images in {', '.join(map(str, inputs))}")
    return out


def image_ids(cfg: Config, paths: list[Path]) -> tuple[list[int], str]:
    """COCO image ids for `paths`: those of an annotation file (val, then train) listing every one
    of the file names, so the results read against it; else 1..N in input order."""
    names = [p.name for p in paths]
    for ann in (cfg.data.val_json, cfg.data.train_json):
        if not ann or not Path(ann).is_file():
            continue
        try:
            listed = {Path(r["file_name"]).name: int(r["id"]) for r in json.loads(Path(ann).read_text())["images"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if all(n in listed for n in names):
            return [listed[n] for n in names], f"the ids of {ann}"
    return list(range(1, len(paths) + 1)), "1..N in input order (not every file is in the config's annotations)"


def predict_images(cfg: Config, checkpoint: str | Path, inputs: list[Path], out_dir: Path,
                   which: str = "auto", score_threshold: float = 0.5) -> list[Path]:
    """Write pictures, `results.json` and `summary.json` into `out_dir`; returns the pictures.

    `checkpoint`: a file, or a run folder (its last checkpoint)."""
    from dgseg.pipeline.evaluation import save_instances_png, save_results

    paths = list_images(inputs)
    predictor = Predictor(cfg, checkpoint, which)
    ids, id_source = image_ids(cfg, paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, results, summary = [], [], []
    for path, image_id in zip(tqdm(paths, desc="predict"), ids, strict=True):
        pred = predictor(path)
        kept = pred.above(score_threshold)
        target = out_dir / f"{path.stem}.png"
        save_instances_png(path_image(path), kept.as_dict(), target, predictor.categories.names,
                           score_threshold=score_threshold)  # fmt: skip
        written.append(target)
        image_results = kept.to_coco(image_id)
        for r in image_results:
            r["file_name"] = path.name
        results += image_results
        best = float(pred.scores.max()) if len(pred) else None
        record = {"file": str(path), "image_id": image_id, "instances": len(kept), "best_score": best}
        if not len(kept):
            best_txt = "no instance at all" if best is None else f"best {best:.3f}"
            record["note"] = f"no instance scored >= {score_threshold:g} ({best_txt}); {target.name} is the plain image"
            tqdm.write(f"{path.name}: {record['note']}")
        summary.append(record)
    save_results(results, out_dir / "results.json")
    (out_dir / "summary.json").write_text(json.dumps({
        "checkpoint": str(predictor.checkpoint), "weights": predictor.which, "score_threshold": score_threshold,
        "image_ids": id_source, "categories": predictor.categories.source or "numbered 1..K (no annotation file)",
        "images": summary,
    }, indent=1))
    return written


def path_image(path: Path):
    """The image as drawn: (3, H, W) float in [0, 1]."""
    from dgseg.pipeline.data.dataset import read_image

    return read_image(path)
