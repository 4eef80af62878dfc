"""The mask-RoI class head (model.roi_classifier): boxes, sampling, start state, and that it learns shape."""

from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.model.build import build_criterion, build_model
from dgseg.pipeline.model.roi_classifier import MaskRoIClassifier, mask_boxes, roi_grid
from torchvision.ops import roi_align

from tests.model.test_model_overfit import make_scenes, small_config, train_and_score


def _logits(on: torch.Tensor) -> torch.Tensor:
    return torch.where(on, 5.0, -5.0)


def test_boxes_cover_the_mask_cells_with_margin_and_stay_on_the_image():
    on = torch.zeros(1, 3, 10, 12, dtype=torch.bool)
    on[0, 0, 2:4, 3:6] = True  # rows 2-3, columns 3-5
    on[0, 2, 7:10, 0:12] = True  # reaches into the padding below
    pad = torch.zeros(1, 10, 12, dtype=torch.bool)
    pad[:, 8:] = True  # image: 8 rows x 11 columns
    pad[:, :, 11:] = True
    boxes = mask_boxes(_logits(on), pad, margin=0.0)
    # one cell of margin; the far edges stop half a cell inside the image
    assert boxes[0, 0].tolist() == [2.0, 1.0, 7.0, 5.0]
    assert boxes[0, 1].tolist() == [0.0, 0.0, 10.5, 7.5]  # empty mask: the whole image
    assert boxes[0, 2].tolist() == [0.0, 6.0, 10.5, 7.5]  # mask cells on padding do not count
    grown = mask_boxes(_logits(on), None, margin=0.5)
    assert grown[0, 0].tolist() == [0.5, 0.0, 8.5, 6.0]  # 3x2 cells grow by 2.5 and 2 on each side


def test_grid_equals_torchvision_roi_align_with_one_sample_per_bin():
    torch.manual_seed(0)
    feats = torch.randn(2, 5, 12, 10)
    boxes = mask_boxes(torch.randn(2, 3, 12, 10) * 3, None, 0.25)
    grid = roi_grid(boxes, 7, (12, 10))
    ours = torch.nn.functional.grid_sample(feats, grid.reshape(2, 21, 7, 2), align_corners=False,
                                           padding_mode="border").view(2, 5, 3, 7, 7).transpose(1, 2)
    owner = torch.arange(2).repeat_interleave(3).float()[:, None]
    ref = roi_align(feats, torch.cat([owner, boxes.flatten(0, 1)], 1), 7, 1.0, 1, True).view(2, 3, 5, 7, 7)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_the_model_starts_as_mask2former_and_the_head_gets_gradient():
    images, targets, _ = make_scenes(2, 64)
    cfg = small_config()
    torch.manual_seed(0)
    plain = build_model(cfg, 3, {})
    cfg.roi_classifier = True
    torch.manual_seed(0)
    with_roi = build_model(cfg, 3, {})
    missing = with_roi.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(".roi_classifier." in k for k in missing)
    plain.eval()
    with_roi.eval()
    with torch.no_grad():
        torch.testing.assert_close(with_roi(images)["pred_logits"], plain(images)["pred_logits"])
    with_roi.train()
    losses = build_criterion(cfg, 3)(with_roi(images), targets)
    sum(losses.values()).backward()
    head = with_roi.transformer_decoder.roi_classifier
    assert head.out.weight.grad.abs().sum() > 0


def test_head_learns_classes_that_only_the_mask_shape_tells():
    """Constant features, so a mask-pooled feature (what masked attention gives a query) is the same for
    every shape; the layout of the mask inside its box is the only evidence. Held-out masks, new positions
    and sizes: the head must classify them."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")

    def batch(n: int):
        masks, labels = [], []
        for _ in range(n):
            r = float(torch.empty(1).uniform_(3, 6, generator=gen))
            cy, cx = (torch.rand(2, generator=gen) * (24 - 2 * r) + r).tolist()
            kind = int(torch.randint(0, 2, (1,), generator=gen))
            if kind == 0:  # square
                m = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
            else:  # diamond of the same extent
                m = (yy - cy).abs() + (xx - cx).abs() <= r
            masks.append(m)
            labels.append(kind)
        return _logits(torch.stack(masks))[:, None], torch.tensor(labels)

    torch.manual_seed(0)
    head = MaskRoIClassifier(4, num_classes=2, size=7, hidden=64)
    feats = torch.ones(1, 4, 24, 24)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(150):
        masks, labels = batch(32)
        logits = head(feats.expand(32, -1, -1, -1), masks)[:, 0, :2]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    masks, labels = batch(200)
    with torch.no_grad():
        pred = head(feats.expand(200, -1, -1, -1), masks)[:, 0, :2].argmax(1)
    assert (pred == labels).float().mean() >= 0.95


def test_overfits_scenes_whose_classes_share_one_colour():
    """The model with the head learns (here it memorises: without the head these 8 scenes fit as well, 0.90
    vs 0.90; held-out shape classes are what the head is for, see docs/experiments/2026-11-27-roi-class-head.md)."""
    images, targets, _ = make_scenes(8, 64, seed=4)
    grey = images.mean(1, keepdim=True)
    fg = torch.stack([t["masks"].any(0) for t in targets])[:, None]
    images = torch.where(fg, torch.full_like(images, 0.8), grey.expand_as(images))
    cfg = small_config()
    cfg.roi_classifier = True
    assert train_and_score(images, targets, steps=40, cfg=cfg) >= 0.7


def test_image_extent_and_valid_ratios_read_the_same_padding():
    """mask_boxes clips to `image_extent`; the encoder's reference points scale by `valid_ratios`: one padding."""
    from dgseg.pipeline.model.padding import image_extent, valid_ratios

    pad = torch.ones(2, 6, 10, dtype=torch.bool)
    pad[0, :4, :7] = False  # 7 x 4 cells of image, padded bottom/right
    pad[1, :, :] = False  # no padding
    assert image_extent(pad, torch.float32).tolist() == [[7.0, 4.0], [10.0, 6.0]]
    assert valid_ratios(pad, 2, pad.device, torch.float32).flatten().tolist() == pytest.approx([0.7, 4 / 6, 1.0, 1.0])
