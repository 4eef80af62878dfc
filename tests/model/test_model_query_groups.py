"""Query groups (Group DETR): G independent groups of queries in training, one at inference."""

from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.model.build import build_criterion
from dgseg.pipeline.model.criterion import split_groups
from dgseg.pipeline.model.transformer_decoder import MaskedTransformerDecoder

from tests.model.test_model_overfit import make_scenes, small_config, train_and_score
from tests.model.test_model_query_init import _inputs


def _decoder(groups: int) -> MaskedTransformerDecoder:
    torch.manual_seed(0)
    return MaskedTransformerDecoder(in_channels=16, num_classes=3, hidden_dim=16, num_queries=4, nheads=2,
                                    dim_feedforward=32, dec_layers=3, mask_dim=16, query_groups=groups)


def test_training_runs_every_group_and_inference_only_the_first():
    dec = _decoder(3)
    feats, mask_features = _inputs()
    train_out = dec.train()(feats, mask_features)
    assert train_out["query_groups"] == 3
    assert train_out["pred_logits"].shape == (2, 12, 4) and train_out["pred_masks"].shape == (2, 12, 16, 24)
    assert all(a["pred_logits"].shape == (2, 12, 4) for a in train_out["aux_outputs"])
    eval_out = dec.eval()(feats, mask_features)
    assert "query_groups" not in eval_out and eval_out["pred_logits"].shape == (2, 4, 4)
    # the groups never see each other: the first group computes in training exactly what inference does
    assert torch.allclose(train_out["pred_logits"][:, :4], eval_out["pred_logits"], atol=1e-6)
    assert torch.allclose(train_out["pred_masks"][:, :4], eval_out["pred_masks"], atol=1e-5)
    # and the other groups are not copies of it
    assert not torch.allclose(train_out["pred_logits"][:, 4:8], train_out["pred_logits"][:, :4])


def test_one_group_is_mask2former_and_encoder_queries_are_refused():
    dec = _decoder(1).train()
    feats, mask_features = _inputs()
    out = dec(feats, mask_features)
    assert "query_groups" not in out and out["pred_logits"].shape == (2, 4, 4)
    with pytest.raises(ValueError, match="query_groups"):
        MaskedTransformerDecoder(in_channels=16, num_classes=3, hidden_dim=16, num_queries=4, nheads=2,
                                 query_init="encoder", query_groups=2)


def _targets():
    torch.manual_seed(2)
    masks = torch.zeros(2, 64, 96, dtype=torch.bool)
    masks[0, 5:30, 10:40] = True
    masks[1, 30:60, 50:90] = True
    return [{"labels": torch.tensor([0, 2]), "masks": masks}, {"labels": torch.tensor([1]), "masks": masks[:1]}]


def test_criterion_matches_each_group_on_its_own_and_averages():
    cfg = small_config()
    criterion = build_criterion(cfg, 3)
    dec = _decoder(3).train()
    feats, mask_features = _inputs()
    out = dec(feats, mask_features)
    targets = _targets()
    torch.manual_seed(3)
    grouped = criterion(out, targets)
    # every group is matched one-to-one: with the same points, the mean of the per-group losses
    torch.manual_seed(3)
    per_group = [criterion(g, targets) for g in split_groups(out, 3)]
    assert set(grouped) == set(per_group[0])
    for k, v in grouped.items():
        assert torch.allclose(v, torch.stack([p[k] for p in per_group]).mean(), rtol=1e-5), k
    # a group-blind criterion would match all 12 queries at once: each target once, a different loss
    torch.manual_seed(3)
    blind = criterion({k: v for k, v in out.items() if k != "query_groups"}, targets)
    assert not torch.allclose(blind["loss_ce"], grouped["loss_ce"])
    with pytest.raises(ValueError, match="groups"):
        split_groups({"pred_logits": torch.zeros(1, 10, 4), "pred_masks": torch.zeros(1, 10, 4, 4)}, 3)


def test_overfits_eight_small_scenes_with_query_groups():
    """Learning with three groups and inference from the first alone."""
    images, targets, _ = make_scenes(8, 64)
    cfg = small_config()
    cfg.query_groups = 3
    assert train_and_score(images, targets, steps=40, cfg=cfg) >= 0.8
