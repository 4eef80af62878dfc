"""Gradient accumulation: micro-batches give the whole batch's update (supervised and stage B)."""

from __future__ import annotations

import math

import pytest
import torch
from dgseg.pipeline.engine.accumulate import normalisers, scale_terms, shares, split_batch, term_kind
from dgseg.pipeline.engine.checkpoint import last_checkpoint, load_checkpoint
from dgseg.pipeline.train import train

_real_rand = torch.rand


def _grid_rand(*size, generator=None, device=None, dtype=None, **kw):
    """torch.rand whose values depend only on the position after the first (batch / mask) dimension, so
    the points an image or mask gets do not depend on which micro-batch it is in."""
    if generator is not None:
        return _real_rand(*size, generator=generator, device=device, dtype=dtype, **kw)
    shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)
    inner = shape[1:] if len(shape) >= 3 else shape
    n = math.prod(inner)
    vals = (torch.arange(n, dtype=torch.float64) * 0.7548776662 + 0.1) % 1.0
    vals = vals.reshape(inner).to(dtype or torch.float32)
    if len(shape) >= 3:
        vals = vals.expand(shape).contiguous()
    return vals.to(device) if device is not None else vals


def _final_state(tiny_cache, tiny_config, out, *over) -> dict:
    train(tiny_config(tiny_cache, out, "model.backbone_norm=frozen", "train.batch_size=4",
                      "semi.unlabeled_batch_size=4", "train.clip_grad=0", "train.warmup_iters=0",
                      "train.lr=0.01", *over))
    return load_checkpoint(last_checkpoint(out))


def _sgd(params, lr, weight_decay=0.0, **_):
    """SGD in AdamW's place: its update is linear in the gradient, where AdamW's first step is lr x sign(g)
    and turns the float noise of gradients that are zero in theory (a bias before a norm) into full steps."""
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def _largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((x - b[k]).abs().max().item() for k, x in a.items() if x.is_floating_point())


@pytest.mark.parametrize("semi", [False, True], ids=["supervised", "stage-B"])
def test_two_micro_batches_give_the_whole_batch_update(tiny_cache, tiny_config, tmp_path, monkeypatch, semi):
    monkeypatch.setattr(torch, "rand", _grid_rand)
    monkeypatch.setattr(torch.optim, "AdamW", _sgd)
    over = ["train.max_iter=1"]
    if semi:
        # one stage-A step, then one stage-B step whose teacher labels everything it sees
        over = ["train.max_iter=2", "semi.enabled=true", "semi.teacher_iters=1", "semi.burn_in_iter=1",
                "semi.score_threshold=0.0"]
    whole = _final_state(tiny_cache, tiny_config, tmp_path / "whole", *over)
    micro = _final_state(tiny_cache, tiny_config, tmp_path / "micro", *over, "train.accumulate=2")
    init = _final_state(tiny_cache, tiny_config, tmp_path / "init", *over, "train.lr=1e-12")
    moved = _largest_difference(whole["model"], init["model"])
    assert moved > 1e-3  # the steps moved the weights far more than the tolerance below
    assert _largest_difference(whole["model"], micro["model"]) < 1e-4 * moved
    if semi:
        assert _largest_difference(whole["teacher"], micro["teacher"]) < 1e-4 * moved
        assert whole["controller"] == pytest.approx(micro["controller"])
        assert whole["controller"]["step"] == 0  # one controller update for the one stage-B step


def test_shares_of_the_parts_add_up_to_the_whole():
    t = lambda n: {"labels": torch.zeros(n, dtype=torch.int64)}  # noqa: E731
    parts = [[t(3), t(0)], [t(5), t(1)]]
    got = shares(parts, num_queries=4, no_object_weight=0.1)
    for kind in ("masks", "class"):
        assert sum(s[kind] for s in got) == pytest.approx(1.0)
    # class weights: matched queries count 1, the rest 0.1; at most num_queries are matched
    assert normalisers(parts[1], 4, 0.1)["class"] == pytest.approx(4 + 0.1 * 0 + 1 + 0.1 * 3)
    assert got[0]["masks"] == pytest.approx(3 / 9)


def test_terms_are_scaled_by_their_own_normaliser_and_unknown_terms_refused():
    share = {"masks": 0.25, "class": 0.5}
    out = scale_terms({"loss_ce_1_rgbview": torch.tensor(2.0), "loss_dice_unsup_rgb": torch.tensor(2.0)}, share)
    assert out["loss_ce_1_rgbview"].item() == 1.0 and out["loss_dice_unsup_rgb"].item() == 0.5
    with pytest.raises(ValueError, match="loss_box"):
        term_kind("loss_box")


def test_a_batch_that_does_not_split_evenly_is_refused():
    from dgseg.pipeline.data.collate import Batch

    batch = Batch(images=torch.zeros(3, 3, 8, 8), valid=torch.ones(3, 8, 8, dtype=torch.bool),
                  targets=[{}] * 3, image_ids=["a", "b", "c"], orig_sizes=[(8, 8)] * 3)
    with pytest.raises(ValueError, match="accumulate=2 does not divide a batch of 3"):
        split_batch(batch, 2)
    assert [len(p) for p in split_batch(batch, 3)] == [1, 1, 1]
