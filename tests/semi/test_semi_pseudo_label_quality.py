from __future__ import annotations

import math

import pytest
import torch
from dgseg.pipeline.semi.pseudo_label_quality import pseudo_label_counts, summarise


def _masks(*boxes, size=8):
    out = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        out[i, r0:r1, c0:c1] = True
    return out


def test_counts_right_on_object_and_recall():
    targets = [{"labels": torch.tensor([0, 1]), "masks": _masks((0, 4, 0, 4), (4, 8, 4, 8))}]
    # on instance 0 with its class; on instance 1 with the wrong class; IoU 0.5 with instance 0 (counts);
    # on nothing
    pseudo = [{"labels": torch.tensor([0, 0, 0, 1]),
               "masks": _masks((0, 4, 0, 4), (4, 8, 4, 8), (0, 4, 0, 2), (0, 2, 6, 8))}]
    c = pseudo_label_counts(pseudo, targets)
    assert c == dict(kept=4, right=2, on_object=3, instances=2, recalled=1)
    s = summarise(c, images=1)
    assert s == dict(per_image=4.0, precision=0.5, on_object=0.75, recall=0.5)


def test_empty_sets_and_mismatches():
    empty = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}
    one = {"labels": torch.tensor([2]), "masks": _masks((0, 4, 0, 4))}
    assert pseudo_label_counts([empty, one], [one, empty]) == dict(kept=1, right=0, on_object=0, instances=1,
                                                                   recalled=0)
    s = summarise(pseudo_label_counts([empty], [empty]), images=1)
    assert s["per_image"] == 0 and math.isnan(s["precision"]) and math.isnan(s["recall"])
    with pytest.raises(ValueError, match="2 pseudo-label sets for 1"):
        pseudo_label_counts([one, one], [one])
    with pytest.raises(ValueError, match="not on one canvas"):
        pseudo_label_counts([one], [{"labels": torch.tensor([2]), "masks": _masks((0, 4, 0, 4), size=6)}])
