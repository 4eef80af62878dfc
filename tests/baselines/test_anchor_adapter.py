"""The anchor's data adapter: Sample -> torchvision inputs/targets, and Mask R-CNN outputs -> COCO results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dgseg.pipeline.baselines.adapter import anchor_input, anchor_target, masks_to_boxes
from dgseg.pipeline.baselines.loop import to_prediction
from dgseg.pipeline.data.coco import DataError
from dgseg.pipeline.data.dataset import InstanceDataset
from dgseg.pipeline.data.sample import new_sample
from dgseg.pipeline.evaluation import Evaluator
from dgseg.pipeline.evaluation.results import encode_masks
from PIL import Image


def _sample(depth=None):
    masks = torch.zeros(3, 8, 10, dtype=torch.bool)
    masks[0, 1:4, 2:6] = True  # rows 1..3, columns 2..5
    masks[1, 6, 9] = True  # one pixel in the last column
    # masks[2] is empty (e.g. an instance cropped away): it has no box and must be dropped
    image = torch.rand(3, 8, 10)
    return new_sample(image, masks, torch.tensor([0, 2, 1]), depth=depth, image_id="7")


def test_target_boxes_come_from_the_masks_and_labels_shift_past_background():
    s = _sample()
    t = anchor_target(s)
    assert t["boxes"].dtype == torch.float32
    assert t["boxes"].tolist() == [[2.0, 1.0, 6.0, 4.0], [9.0, 6.0, 10.0, 7.0]]  # x0, y0, x1 + 1, y1 + 1
    assert t["labels"].tolist() == [1, 3]  # contiguous 0 and 2, background is 0 in torchvision
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (2, 8, 10)
    assert torch.equal(t["masks"].bool(), s.masks[:2])
    assert masks_to_boxes(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 4)


def test_inputs_per_mode_normalise_depth_per_image():
    depth = 0.2 + 0.4 * torch.rand(1, 8, 10)
    s = _sample(depth)
    assert torch.equal(anchor_input(s, "rgb"), s.image)
    d = anchor_input(s, "depth")
    assert d.shape == (3, 8, 10) and torch.equal(d[0], d[1]) and torch.equal(d[0], d[2])
    assert float(d.min()) == 0.0 and float(d.max()) == pytest.approx(1.0)
    assert torch.allclose(d[0], (depth[0] - depth.min()) / (depth.max() - depth.min()))
    rgbd = anchor_input(s, "rgbd")
    assert rgbd.shape == (4, 8, 10) and torch.equal(rgbd[:3], s.image) and torch.equal(rgbd[3], d[0])
    assert torch.equal(anchor_input(_sample(torch.full((1, 8, 10), 0.5)), "depth"), torch.zeros(3, 8, 10))


def test_depth_modes_refuse_a_sample_without_depth_at_image_resolution():
    with pytest.raises(DataError, match="needs depth"):
        anchor_input(_sample(), "rgbd")
    with pytest.raises(DataError, match="resolution"):
        anchor_input(_sample(torch.rand(1, 4, 5)), "depth")


def test_category_ids_round_trip_through_the_project_dataset_and_evaluator(tmp_path):
    """Non-contiguous COCO category ids: dataset label k -> torchvision k + 1 -> prediction k -> category id."""
    h, w = 24, 32
    Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    masks = np.zeros((2, h, w), dtype=bool)
    masks[0, 2:10, 3:12] = True
    masks[1, 12:22, 15:30] = True
    rles = encode_masks(masks)
    cats = [{"id": 4, "name": "cube"}, {"id": 11, "name": "ball"}]
    anns = [{"id": i + 1, "image_id": 5, "category_id": cid, "segmentation": rles[i], "area": int(masks[i].sum()),
             "bbox": [0, 0, 1, 1], "iscrowd": 0} for i, cid in enumerate((11, 4))]  # fmt: skip
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 5, "file_name": "a.png", "height": h, "width": w}],
                               "annotations": anns, "categories": cats}))  # fmt: skip
    ds = InstanceDataset(tmp_path, ann)
    target = anchor_target(ds[0])
    assert target["labels"].tolist() == [2, 1]  # category 11 is the second class, 4 the first

    # what Mask R-CNN returns for a perfect detection: labels 1..K, (N, 1, H, W) mask probabilities
    output = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.tensor([0.9, 0.8]),
              "masks": target["masks"][:, None].float() * 0.9}  # fmt: skip
    evaluator = Evaluator(ds.coco)
    evaluator.process(["5"], [to_prediction(output)])
    assert sorted((r["category_id"], round(r["score"], 3)) for r in evaluator.results) == [(4, 0.8), (11, 0.9)]
    assert evaluator.evaluate()["AP"] == pytest.approx(100.0)
