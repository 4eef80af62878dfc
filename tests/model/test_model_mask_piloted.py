"""Mask-piloted queries (MP-Former): ground-truth attention in training, no leak, no change at inference."""

from __future__ import annotations

import torch
from dgseg.pipeline.model.build import build_criterion, build_model
from dgseg.pipeline.model.mask_former import pilot_targets
from dgseg.pipeline.model.transformer_decoder import MaskedTransformerDecoder, pilot_self_mask

from tests.model.test_model_overfit import make_scenes, small_config, train_and_score


def _piloted_model(query_init: str = "learned"):
    cfg = small_config()
    cfg.mask_piloted = True
    cfg.query_init = query_init
    torch.manual_seed(0)
    return cfg, build_model(cfg, 3, {})


def _scenes_with_an_empty_one():
    images, targets, _ = make_scenes(3, 64)
    targets[1] = {"labels": targets[1]["labels"][:0], "masks": targets[1]["masks"][:0]}
    return images, targets


def test_pilot_slots_hold_each_image_s_instances_in_order():
    _, targets = _scenes_with_an_empty_one()
    labels, masks = pilot_targets(targets, (96, 64), torch.device("cpu"))
    m = max(len(t["labels"]) for t in targets)
    assert labels.shape == (3, m) and masks.shape == (3, m, 96, 64)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        assert labels[i, :n].tolist() == t["labels"].tolist() and (labels[i, n:] == -1).all()
        assert torch.equal(masks[i, :n, :64, :64].bool(), t["masks"]) and not masks[i, n:].any()
        assert not masks[i, :, 64:].any()  # the padded rows below the image


def test_matched_queries_never_see_the_piloted_ones():
    """The matched predictions are the same with and without the pilots (nothing of the ground truth
    leaks into what is matched and evaluated), and inference ignores the targets."""
    _, model = _piloted_model()
    images, targets = _scenes_with_an_empty_one()
    model.train()
    piloted = model(images, targets=targets)
    plain = model(images)
    assert "pilot_outputs" in piloted and "pilot_outputs" not in plain
    assert torch.allclose(piloted["pred_logits"], plain["pred_logits"], atol=1e-5)
    assert torch.allclose(piloted["pred_masks"], plain["pred_masks"], atol=1e-4)
    m = max(len(t["labels"]) for t in targets)
    assert piloted["pilot_outputs"]["pred_masks"].shape == (3, m, 16, 16)
    assert len(piloted["pilot_outputs"]["aux_outputs"]) == len(piloted["aux_outputs"])
    model.eval()
    with torch.no_grad():
        assert "pilot_outputs" not in model(images, targets=targets)
    # a batch without any instance has nothing to pilot
    none = [{"labels": t["labels"][:0], "masks": t["masks"][:0]} for t in targets]
    assert "pilot_outputs" not in model.train()(images, targets=none)


def test_self_attention_mask_blocks_pilots_from_matched_queries_and_empty_slots():
    valid = torch.tensor([[True, False], [True, True]])
    groups = torch.tensor([[False, True, True], [True, False, True], [True, True, False]])
    mask = pilot_self_mask(3, valid, groups, nheads=2)
    assert mask.shape == (4, 5, 5)
    first = mask[0]  # image 0, head 0
    assert torch.equal(first[:3, :3], groups)  # the groups' own mask kept
    assert first[:3, 3:].all()  # matched rows see no pilot
    assert not first[3:, :3].any()  # pilots see the matched queries
    assert first[:, 4].all() and not first[3:, 3].any()  # image 0's empty slot 1 is seen by nobody
    assert not mask[2][3:, 3:].any()  # image 1: both slots filled
    assert torch.equal(mask[0], mask[1])  # heads repeat their image's mask


def test_pilots_attend_inside_their_ground_truth_at_every_level():
    dec = MaskedTransformerDecoder(in_channels=16, num_classes=3, hidden_dim=16, num_queries=4, nheads=2,
                                   dim_feedforward=32, dec_layers=3, mask_dim=16, mask_piloted=True)
    masks = torch.zeros(1, 2, 64, 64)
    masks[0, 0, 8:24, 40:56] = 1  # 16 px square
    masks[0, 1, 33:35, 2:4] = 1  # 2 px: under one cell even at stride 32
    labels = torch.tensor([[1, 2]])
    _, _, blocked = dec._pilot_queries((labels, masks), [(2, 2), (4, 4), (8, 8)], [None] * 3)
    open_cells = [(~b[0]).view(2, *s) for b, s in zip(blocked, [(2, 2), (4, 4), (8, 8)], strict=True)]
    assert open_cells[2][0].nonzero().tolist() == [[1, 5], [1, 6], [2, 5], [2, 6]]
    assert open_cells[0][0].nonzero().tolist() == [[0, 1]]
    assert all(cells[1].sum() == 1 for cells in open_cells)  # the tiny instance keeps a cell everywhere
    assert open_cells[0][1].nonzero().tolist() == [[1, 0]]


def test_pilot_losses_use_each_slot_s_own_instance():
    cfg, model = _piloted_model()
    criterion = build_criterion(cfg, 3)
    images, targets = _scenes_with_an_empty_one()
    out = model.train()(images, targets=targets)
    losses = criterion(out, targets)
    layers = len(out["aux_outputs"])
    for term in ("ce", "mask", "dice"):
        assert f"loss_pilot_{term}" in losses
        assert all(f"loss_pilot_{term}_{i}" in losses for i in range(layers))
    # swapping two instances' slots in the outputs raises the pilot mask loss: no matching rescues it
    swapped = dict(out)
    p = out["pilot_outputs"]
    swapped["pilot_outputs"] = {**p, "pred_masks": p["pred_masks"].flip(1)}
    two = [i for i, t in enumerate(targets) if len(t["labels"]) >= 2]
    assert two, "the scenes must hold an image of two instances"
    torch.manual_seed(0)
    a = criterion(out, targets)["loss_pilot_dice"]
    torch.manual_seed(0)
    b = criterion(swapped, targets)["loss_pilot_dice"]
    assert not torch.allclose(a, b)
    sum(losses.values()).backward()
    assert model.transformer_decoder.label_embed.weight.grad.abs().sum() > 0


def test_piloted_training_learns_and_encoder_queries_combine():
    images, targets, _ = make_scenes(8, 64)
    cfg = small_config()
    cfg.mask_piloted = True
    assert train_and_score(images, targets, steps=40, cfg=cfg) >= 0.8
    _, model = _piloted_model("encoder")
    out = model.train()(images, targets=targets)
    assert out["pilot_outputs"]["pred_logits"].shape[1] == max(len(t["labels"]) for t in targets)
