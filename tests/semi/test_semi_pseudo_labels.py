from __future__ import annotations

import math

import pytest
import torch
from dgseg.pipeline.config import SemiConfig
from dgseg.pipeline.model.postprocess import mask_iou
from dgseg.pipeline.semi.pseudo_labels import PseudoLabeler, make_pseudo_labels
from semi_reference import per_image_pseudo_labels

H = W = 8  # canvas; mask logits come at H/2 x W/2
BIG = 10.0


def _logits(probs):
    """Class logits whose softmax is exactly `probs` (K+1 entries, last = no-object)."""
    return torch.tensor([math.log(p) for p in probs])


def _block(r0, r1, c0, c1, value=BIG, size=(H // 2, W // 2)):
    """Low-res mask logits: `value` inside rows r0:r1, cols c0:c1, -value elsewhere.

    Symmetric values put the upsampled mask's sigmoid-0.5 contour exactly on the block's edge.
    """
    m = torch.full(size, -value)
    m[r0:r1, c0:c1] = value
    return m


def _outputs(queries):
    """queries: list of (probs, low-res mask logits) for one image -> outputs with B=1."""
    logits = torch.stack([_logits(p) for p, _ in queries])[None]
    masks = torch.stack([m for _, m in queries])[None]
    return {"pred_logits": logits, "pred_masks": masks}


GOOD_PROBS = (0.05, 0.9, 0.05)  # K=2: class 1 at 0.9
GOOD_MASK = _block(0, 2, 0, 2)  # -> canvas rows 0:4, cols 0:4 = 16 px
KW = dict(score_threshold=0.7, mask_threshold=0.5, min_mask_area=5, dedup_iou=0.9)


def test_a_good_query_passes_with_its_upsampled_mask():
    (res,) = make_pseudo_labels(_outputs([(GOOD_PROBS, GOOD_MASK)]), (H, W), **KW)
    assert res["labels"].tolist() == [1] and res["labels"].dtype == torch.int64
    assert res["scores"].dtype == torch.float32
    torch.testing.assert_close(res["scores"], torch.tensor([0.9]))
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[0:4, 0:4] = True  # bilinear x2 of a 2x2 block, thresholded at sigmoid 0.5
    assert res["masks"].dtype == torch.bool and torch.equal(res["masks"][0], expected)


# each case breaks exactly one rule of a query that otherwise passes
CASES = {
    # argmax is no-object although the best class clears a (low) score threshold
    "no_object_argmax": ((0.35, 0.25, 0.4), GOOD_MASK, dict(score_threshold=0.2)),
    # best class 0.65 < 0.7
    "score_below_threshold": ((0.1, 0.65, 0.25), GOOD_MASK, {}),
    # sigmoid <= 0.6 everywhere (logits +-log 1.5), threshold 0.65
    "mask_threshold": (GOOD_PROBS, _block(0, 2, 0, 2, value=math.log(0.6 / 0.4)), dict(mask_threshold=0.65)),
    # mask logits all negative -> empty mask
    "empty_mask": (GOOD_PROBS, torch.full((H // 2, W // 2), -BIG), {}),
    # 16 px < 17
    "min_area": (GOOD_PROBS, GOOD_MASK, dict(min_mask_area=17)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_rule_drops_on_its_own(name):
    probs, mask, override = CASES[name]
    (res,) = make_pseudo_labels(_outputs([(probs, mask)]), (H, W), **{**KW, **override})
    assert len(res["labels"]) == 0
    # the same query passes once the broken rule is relaxed back (so only that rule dropped it)
    relaxed = {**KW, "score_threshold": 0.2, "mask_threshold": 0.5, "min_mask_area": 16}
    if name in ("no_object_argmax", "empty_mask"):
        return  # these cannot be relaxed: no threshold lets them through
    (res,) = make_pseudo_labels(_outputs([(probs, mask)]), (H, W), **{**relaxed})
    assert len(res["labels"]) == 1


def test_boundaries_are_strict_for_score_and_inclusive_for_area():
    out = _outputs([(GOOD_PROBS, GOOD_MASK)])
    assert len(make_pseudo_labels(out, (H, W), **{**KW, "min_mask_area": 16})[0]["labels"]) == 1
    assert len(make_pseudo_labels(out, (H, W), **{**KW, "score_threshold": 0.9 + 1e-6})[0]["labels"]) == 0
    assert len(make_pseudo_labels(out, (H, W), **{**KW, "score_threshold": 0.9 - 1e-6})[0]["labels"]) == 1


def test_valid_region_cuts_masks_and_drops_padding_only_masks():
    inside_then_pad = _block(0, 2, 1, 3)  # canvas cols 2:6, rows 0:4
    pad_only = _block(2, 4, 2, 4)  # canvas rows 4:8, cols 4:8
    out = _outputs([(GOOD_PROBS, inside_then_pad), ((0.8, 0.1, 0.1), pad_only)])
    valid = torch.zeros(1, H, W, dtype=torch.bool)
    valid[:, :, :4] = True  # right half is padding
    (res,) = make_pseudo_labels(out, (H, W), valid, **KW)
    assert res["labels"].tolist() == [1]
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[0:4, 2:4] = True  # 8 px left of the padding
    assert torch.equal(res["masks"][0], expected)
    (res,) = make_pseudo_labels(out, (H, W), valid, **{**KW, "min_mask_area": 9})
    assert len(res["labels"]) == 0
    (res,) = make_pseudo_labels(out, (H, W), None, **KW)  # without valid both survive
    assert sorted(res["labels"].tolist()) == [0, 1]


def test_duplicates_keep_the_higher_score_and_output_is_sorted():
    other = _block(2, 4, 2, 4)
    near = _block(0, 2, 0, 2)
    near[2, 0] = BIG  # adds canvas rows 4:6, cols 0:2 partially -> IoU with GOOD_MASK < 0.9
    queries = [
        ((0.1, 0.8, 0.1), GOOD_MASK),  # duplicate of the next one, lower score
        ((0.95, 0.03, 0.02), GOOD_MASK),
        ((0.05, 0.85, 0.1), other),
    ]
    (res,) = make_pseudo_labels(_outputs(queries), (H, W), **KW)
    assert res["labels"].tolist() == [0, 1]  # the 0.95 copy, then `other`; the 0.8 copy is gone
    torch.testing.assert_close(res["scores"], torch.tensor([0.95, 0.85]))
    (res,) = make_pseudo_labels(_outputs(queries), (H, W), **{**KW, "dedup_iou": None})
    assert res["labels"].tolist() == [0, 1, 1]
    (res,) = make_pseudo_labels(_outputs([queries[1], ((0.1, 0.8, 0.1), near)]), (H, W), **KW)
    iou = mask_iou(res["masks"][:1], res["masks"][1:])
    assert len(res["labels"]) == 2 and 0.5 < iou.item() < 0.9


def test_all_filtered_gives_typed_empty_sets_per_image():
    q = [((0.5, 0.3, 0.2), GOOD_MASK), ((0.1, 0.1, 0.8), GOOD_MASK)]
    out = _outputs(q)
    out = {k: torch.cat([v, v]) for k, v in out.items()}  # B = 2
    res = make_pseudo_labels(out, (H, W), torch.ones(2, H, W, dtype=torch.bool), **KW)
    assert len(res) == 2
    for r in res:
        assert r["labels"].shape == (0,) and r["labels"].dtype == torch.int64
        assert r["masks"].shape == (0, H, W) and r["masks"].dtype == torch.bool
        assert r["scores"].shape == (0,) and r["scores"].dtype == torch.float32


def test_images_are_independent_and_bf16_is_accepted():
    a = _outputs([(GOOD_PROBS, GOOD_MASK)])
    b = _outputs([((0.3, 0.3, 0.4), GOOD_MASK)])
    out = {k: torch.cat([a[k], b[k]]).to(torch.bfloat16) for k in a}
    res = make_pseudo_labels(out, (H, W), **KW)
    assert [len(r["labels"]) for r in res] == [1, 0]


def test_bad_shapes_are_named():
    out = _outputs([(GOOD_PROBS, GOOD_MASK)])
    with pytest.raises(ValueError, match="valid"):
        make_pseudo_labels(out, (H, W), torch.ones(1, H, W + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="pred_masks"):
        make_pseudo_labels({"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"][0]}, (H, W))
    with pytest.raises(ValueError, match="mask_threshold"):
        make_pseudo_labels(out, (H, W), mask_threshold=1.0)


def test_labeler_from_config():
    cfg = SemiConfig(score_threshold=0.5, min_mask_area=3, pseudo_dedup_iou=None)
    labeler = PseudoLabeler.from_config(cfg)
    assert labeler.score_threshold == 0.5 and labeler.min_mask_area == 3 and labeler.dedup_iou is None
    (res,) = labeler(_outputs([((0.1, 0.6, 0.3), GOOD_MASK)]), (H, W))
    assert res["labels"].tolist() == [1]


@pytest.mark.parametrize("dedup", [0.5, None])
def test_batched_filtering_equals_the_per_image_reference(dedup):
    g = torch.Generator().manual_seed(7)
    b, q, k, size = 5, 12, 3, (24, 20)
    logits = torch.randn(b, q, k + 1, generator=g) * 3
    logits[3] -= 50.0  # an image where nothing passes
    logits[3, :, -1] += 100.0
    low = torch.randn(b, q, 6, 5, generator=g) * 4
    low[:, 1] = low[:, 0] + 0.01  # near-duplicates of query 0 in every image
    valid = torch.ones(b, *size, dtype=torch.bool)
    valid[1, :, 12:] = False
    kw = dict(score_threshold=0.4, mask_threshold=0.5, min_mask_area=6, dedup_iou=dedup)
    outputs = {"pred_logits": logits, "pred_masks": low}
    got = make_pseudo_labels(outputs, size, valid, **kw)
    want = per_image_pseudo_labels(outputs, size, valid, **kw)
    assert sum(len(r["labels"]) for r in want) > 3 and len(want[3]["labels"]) == 0
    for r, w in zip(got, want, strict=True):
        assert r["labels"].tolist() == w["labels"].tolist()
        assert torch.equal(r["masks"], w["masks"])
        assert torch.equal(r["scores"], w["scores"])
