from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.semi.agreement import agreement_counts, pseudo_label_agreement
from semi_reference import count_matches

W = 100  # masks are intervals on a 1 x W strip, so IoUs are easy to read


def _set(intervals, labels=None):
    masks = torch.zeros(len(intervals), 1, W, dtype=torch.bool)
    for i, (a, b) in enumerate(intervals):
        masks[i, 0, a:b] = True
    labels = torch.tensor(labels if labels is not None else [0] * len(intervals), dtype=torch.int64)
    return {"labels": labels, "masks": masks}


def _empty():
    return {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 1, W, dtype=torch.bool)}


def test_identical_disjoint_and_empty_sets():
    s = _set([(0, 20), (30, 60), (70, 90)], [0, 1, 2])
    assert pseudo_label_agreement([s], [s]) == 1.0
    assert pseudo_label_agreement([s], [_set([(20, 30), (60, 70)])]) == 0.0
    assert pseudo_label_agreement([_empty(), _empty()], [_empty(), _empty()]) is None


def test_images_with_an_empty_set_are_skipped():
    """A view that found nothing is not "disagreement" (it would push the controller towards that view)."""
    s = _set([(0, 20), (30, 60), (70, 90)], [0, 1, 2])
    assert pseudo_label_agreement([s], [_empty()]) is None
    assert pseudo_label_agreement([_empty()], [s]) is None
    # image 1 agrees fully; image 2's depth set is empty and does not dilute it
    assert pseudo_label_agreement([s, s], [s, _empty()]) == 1.0
    assert agreement_counts([s, s], [s, _empty()]) == (3, 6)


def test_iou_threshold_and_class_rule():
    a = _set([(0, 50)], [1])
    assert pseudo_label_agreement([a], [_set([(0, 26)], [1])]) == 1.0  # IoU 0.52
    assert pseudo_label_agreement([a], [_set([(0, 25)], [1])]) == 0.0  # IoU 0.5 is not > 0.5
    assert pseudo_label_agreement([a], [_set([(0, 25)], [1])], iou_threshold=0.4) == 1.0
    other_class = _set([(0, 50)], [2])
    assert pseudo_label_agreement([a], [other_class]) == 0.0
    assert pseudo_label_agreement([a], [other_class], class_aware=False) == 1.0


def test_f_measure_is_micro_averaged_over_the_batch():
    img1_rgb, img1_depth = _set([(0, 40), (50, 90)]), _set([(0, 40)])  # 1 match of 2 + 1
    img2_rgb, img2_depth = _set([(10, 20)]), _set([(10, 20), (30, 40)])  # 1 of 1 + 2
    assert pseudo_label_agreement([img1_rgb, img2_rgb], [img1_depth, img2_depth]) == pytest.approx(2 * 2 / 6)


def test_matching_is_one_to_one_and_maximal():
    # greedy by best IoU would take A1-D1 (0.9) and leave A2-D2 (0.33): one match;
    # the maximal one-to-one matching is A1-D2 (0.67) + A2-D1 (0.67): two matches
    rgb = _set([(0, 45), (10, 60)])
    depth = _set([(0, 50), (0, 30)])
    assert count_matches(rgb, depth) == 2
    assert pseudo_label_agreement([rgb], [depth]) == 1.0
    # one depth mask cannot match two RGB masks
    assert count_matches(_set([(0, 50), (0, 48)]), _set([(0, 49)])) == 1


def test_mismatched_batch_is_an_error():
    with pytest.raises(ValueError, match="one depth set per RGB set"):
        pseudo_label_agreement([_empty()], [])


def test_batched_counts_equal_the_per_image_counts():
    from dgseg.pipeline.semi.agreement import batch_count_matches

    g = torch.Generator().manual_seed(2)
    rgb, depth = [], []
    for i in range(6):
        for sets in (rgb, depth):
            n = int(torch.randint(0, 5, (1,), generator=g)) if i != 2 else 0
            starts = torch.randint(0, 80, (n,), generator=g).tolist()
            lens = torch.randint(5, 20, (n,), generator=g).tolist()
            labels = torch.randint(0, 2, (n,), generator=g).tolist()
            sets.append(_set([(a, a + d) for a, d in zip(starts, lens, strict=True)], labels))
    for aware in (True, False):
        got = batch_count_matches(rgb, depth, iou_threshold=0.3, class_aware=aware)
        want = [count_matches(r, d, iou_threshold=0.3, class_aware=aware) for r, d in zip(rgb, depth, strict=True)]
        assert got == want and sum(want) > 0
