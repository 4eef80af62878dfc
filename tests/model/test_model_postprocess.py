"""Instance inference: top-k pairs, bilinear upsampling, crop of the padding, resize, scores, boxes."""

from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.model.postprocess import masks_to_boxes, matrix_nms_decay, postprocess


def _logits_for(mask_hw: torch.Tensor) -> torch.Tensor:
    """Mask logits at stride 4 (+8 inside, -8 outside) from a (h, w) cell mask."""
    return mask_hw.float() * 16 - 8


def test_recovers_instances_cropped_and_resized_to_the_original_size():
    # padded input 64x64 (16x16 cells), valid 48x40 (12 x 10 cells), original image 96x80 (x2)
    cells = torch.zeros(3, 16, 16, dtype=torch.bool)
    cells[0, 0:6, 0:5] = True  # top-left block: pixels [0, 24) x [0, 20)
    cells[1, 6:12, 5:10] = True  # bottom-right of the valid area: pixels [24, 48) x [20, 40)
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 0, 1] = 10.0  # query 0: class 1, confident
    logits[0, 1, 2] = 8.0  # query 1: class 2, less sure (class 0 takes 5 %)
    logits[0, 1, 0] = 5.0
    outputs = {"pred_logits": logits, "pred_masks": _logits_for(cells)[None]}
    (res,) = postprocess(outputs, [(48, 40)], [(96, 80)], max_det=5, mask_stride=4)
    assert res["masks"].shape == (5, 96, 80) and res["masks"].dtype == torch.bool
    assert res["labels"].dtype == torch.int64
    assert res["labels"][:2].tolist() == [1, 2]
    assert res["scores"][0] > res["scores"][1] > res["scores"][2]
    assert torch.all(res["scores"][:-1] >= res["scores"][1:])
    # the boundary at the cell edge lands (within the bilinear half-cell) at twice the pixel coordinate
    want0 = torch.zeros(96, 80, dtype=torch.bool)
    want0[:48, :40] = True
    want1 = torch.zeros(96, 80, dtype=torch.bool)
    want1[48:, 40:] = True
    for got, want in ((res["masks"][0], want0), (res["masks"][1], want1)):
        iou = (got & want).sum() / (got | want).sum()
        assert iou > 0.95
    torch.testing.assert_close(res["boxes"][0], torch.tensor([0.0, 0.0, 40.0, 48.0]), atol=2, rtol=0)
    torch.testing.assert_close(res["boxes"][1], torch.tensor([40.0, 48.0, 80.0, 96.0]), atol=2, rtol=0)


def test_padding_beyond_the_image_cells_is_never_read():
    # valid 42x30 input pixels = 11x8 cells of a 16x16 grid; what the padding cells hold must not matter
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 3)
    image_cells = torch.randn(1, 4, 11, 8) * 4
    quiet = torch.zeros(1, 4, 16, 16)
    noisy = torch.randn(1, 4, 16, 16) * 50
    for grid in (quiet, noisy):
        grid[..., :11, :8] = image_cells
    alone = postprocess({"pred_logits": logits, "pred_masks": image_cells}, [(42, 30)], [(84, 60)], max_det=6,
                        mask_stride=4)[0]
    for grid in (quiet, noisy):
        res = postprocess({"pred_logits": logits, "pred_masks": grid}, [(42, 30)], [(84, 60)], max_det=6,
                          mask_stride=4)[0]
        torch.testing.assert_close(res["scores"], alone["scores"])
        assert torch.equal(res["masks"], alone["masks"])


def test_a_query_can_be_kept_with_two_classes_and_max_det_caps():
    logits = torch.tensor([[[3.0, 3.0, -5.0], [-5.0, -5.0, 5.0]]])  # query 0 torn between classes 0 and 1
    masks = torch.full((1, 2, 4, 4), 5.0)
    (res,) = postprocess({"pred_logits": logits, "pred_masks": masks}, [(16, 16)], [(16, 16)], max_det=2,
                         mask_stride=4)
    assert sorted(res["labels"].tolist()) == [0, 1]
    assert len(res["scores"]) == 2


def test_stride_2_cells_cover_twice_their_coordinates():
    # a 40x36 image at stride 2: 20x18 cells of a padded 24x24 grid; the instance covers cells [4, 10) x [3, 9)
    cells = torch.zeros(1, 24, 24, dtype=torch.bool)
    cells[0, 4:10, 3:9] = True
    cells[0, 20:, :] = True  # padding cells: never read
    logits = torch.tensor([[[8.0, -8.0]]])
    (res,) = postprocess({"pred_logits": logits, "pred_masks": _logits_for(cells)[None]}, [(40, 36)], [(40, 36)],
                         max_det=1, mask_stride=2)  # fmt: skip
    want = torch.zeros(40, 36, dtype=torch.bool)
    want[8:20, 6:18] = True
    assert res["masks"].shape == (1, 40, 36)
    assert torch.equal(res["masks"][0], want)


def test_masks_to_boxes_handles_empty_masks():
    m = torch.zeros(2, 5, 6, dtype=torch.bool)
    m[1, 1:3, 2:5] = True
    torch.testing.assert_close(masks_to_boxes(m), torch.tensor([[0.0, 0, 0, 0], [2, 1, 5, 3]]))


def test_mask_score_power_ranks_by_mask_confidence():
    # query 0: likely class (0.88), hesitant mask (mean prob 0.51); query 1: unlikely class (0.27), sure mask
    logits = torch.tensor([[[2.0, 0.0], [-1.0, 0.0]]])
    masks = torch.stack([torch.full((4, 4), 0.05), torch.full((4, 4), 6.0)])[None]
    p = logits.softmax(-1)[0, :, 0]
    m = torch.sigmoid(torch.tensor([0.05, 6.0]))
    for power, first in ((1.0, 0), (8.0, 1)):
        (res,) = postprocess({"pred_logits": logits, "pred_masks": masks}, [(16, 16)], [(16, 16)], max_det=2,
                             mask_stride=4, mask_score_power=power)
        want = p * m**power
        torch.testing.assert_close(res["scores"], want.sort(descending=True).values)
        assert int(want.argmax()) == first
    with pytest.raises(ValueError, match="mask_score_power"):
        postprocess({"pred_logits": logits, "pred_masks": masks}, [(16, 16)], [(16, 16)], mask_stride=4,
                    mask_score_power=-1.0)



def test_matrix_nms_decay_follows_solov2():
    a = torch.zeros(8, 8, dtype=torch.bool)
    a[:4, :4] = True
    b = torch.zeros(8, 8, dtype=torch.bool)
    b[4:, 4:] = True
    half = torch.zeros(8, 8, dtype=torch.bool)
    half[:4, :2] = True  # IoU 0.5 with a
    # candidates: query 0 twice (two classes), query 1 repeats its mask, query 2 elsewhere, query 3 repeats it
    # again, query 4 half of it
    queries = torch.tensor([0, 0, 1, 2, 3, 4])
    scores = torch.tensor([0.5, 0.45, 0.4, 0.3, 0.2, 0.1])
    masks = torch.stack([a, a, a, b, a, half])
    decay = matrix_nms_decay(queries, scores, masks, sigma=2.0)
    e = torch.exp(torch.tensor(-2.0))
    # query 0 keeps both classes (its own mask does not suppress it); a duplicate of a duplicate is suppressed
    # by the first (min over suppressors), not spared by the second's compensation
    torch.testing.assert_close(decay, torch.stack([torch.tensor(1.0), torch.tensor(1.0), e, torch.tensor(1.0), e,
                                                   torch.exp(torch.tensor(-2.0 * 0.25))]))


def test_postprocess_with_matrix_nms_lowers_only_the_repeated_mask():
    cells = torch.zeros(3, 4, 4, dtype=torch.bool)
    cells[0, :2, :2] = cells[1, :2, :2] = True
    cells[2, 2:, 2:] = True
    outputs = {"pred_logits": torch.tensor([[[3.0, 0.0], [2.0, 0.0], [1.0, 0.0]]]),
               "pred_masks": torch.where(cells, 6.0, -6.0)[None]}
    (plain,) = postprocess(outputs, [(16, 16)], [(16, 16)], max_det=3, mask_stride=4)
    (nms,) = postprocess(outputs, [(16, 16)], [(16, 16)], max_det=3, mask_stride=4, mask_nms_sigma=2.0)
    s = plain["scores"]  # queries 0, 1, 2 in this order (decreasing class probability, equal masks)
    want = torch.stack([s[0], s[2], s[1] * torch.exp(torch.tensor(-2.0))])  # query 1 drops below query 2
    torch.testing.assert_close(nms["scores"], want)
    assert torch.equal(nms["masks"][2], plain["masks"][1])
    with pytest.raises(ValueError, match="mask_nms_sigma"):
        postprocess(outputs, [(16, 16)], [(16, 16)], mask_stride=4, mask_nms_sigma=-1.0)
