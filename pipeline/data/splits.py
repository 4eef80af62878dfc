"""Labelled / unlabelled splits in the standard SSIS style: a percent of the images is labelled.

For each seed, the images (sorted by id) are shuffled once with `numpy.random.default_rng(seed)`
and the first `max(1, round(n * percent / 100))` are labelled, so the splits of one seed are
nested (1 % inside 2 % inside 5 % ...) and the same seed always gives the same files.
The unlabelled list excludes the labelled images unless `unlabeled_includes_labeled`.

Files written per (percent, seed), with `stem` the annotation file's stem:
`<stem>_<p:g>pct_seed<s>_labeled.json` (COCO: the labelled images, their annotations, all
categories) and `<stem>_<p:g>pct_seed<s>_unlabeled.json` (`{"images": [...]}`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from dgseg.pipeline.data.coco import load_coco, write_image_list


def split_name(stem: str, percent: float, seed: int, kind: str) -> str:
    """File name of one split file; kind is 'labeled' or 'unlabeled'."""
    return f"{stem}_{percent:g}pct_seed{seed}_{kind}.json"


def choose_labeled(image_ids: list, percent: float, seed: int) -> list:
    """The labelled image ids (sorted) for one percent and seed."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent:g}")
    ids = sorted(image_ids)
    if not ids:
        raise ValueError("no images to split")
    count = min(len(ids), max(1, int(round(len(ids) * percent / 100))))
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[i] for i in order[:count])


def make_splits(
    ann: Path,
    out_dir: Path,
    percents: list[float],
    seeds: list[int],
    unlabeled_includes_labeled: bool = False,
) -> list[Path]:
    """Write the labelled COCO file and unlabelled list for every (percent, seed); return the paths written."""
    if not percents or not seeds:
        raise ValueError("make-splits: give at least one percent and one seed")
    for p in percents:
        if not 0 < p <= 100:
            raise ValueError(f"make-splits: percent must be in (0, 100], got {p:g}")
    coco = load_coco(Path(ann))  # raises DataError (a ValueError) naming the file
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(ann).stem
    by_id = {r["id"]: r for r in coco.images}
    written = []
    for seed in seeds:
        for p in percents:
            labeled = choose_labeled(list(by_id), p, seed)
            chosen = set(labeled)
            subset = dict(coco.raw)  # keeps info/licenses and any other top-level keys
            subset["images"] = [by_id[i] for i in labeled]
            subset["annotations"] = [a for i in labeled for a in coco.anns_by_image.get(i, [])]
            subset["categories"] = coco.categories
            lab_path = out_dir / split_name(stem, p, seed, "labeled")
            with open(lab_path, "w", encoding="utf-8") as f:
                json.dump(subset, f)
            rest = [by_id[i] for i in sorted(by_id) if unlabeled_includes_labeled or i not in chosen]
            unl_path = out_dir / split_name(stem, p, seed, "unlabeled")
            write_image_list(unl_path, rest)
            written += [lab_path, unl_path]
    return written
