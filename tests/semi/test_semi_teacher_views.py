"""The stage-B teacher labels both views of an unlabelled batch in one forward, with the labels of two."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch
from dgseg.pipeline.config import Config, ModelConfig
from dgseg.pipeline.model.build import build_model
from dgseg.pipeline.semi.depth_view import render_depth_view
from dgseg.pipeline.semi.pseudo_labels import PseudoLabeler
from dgseg.pipeline.semi.trainer import teacher_pseudo_labels

B, H, W = 3, 64, 48
CHANNELS = {"path_3": 8, "path_4": 5}


def _teacher():
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", hidden_dim=32, mask_dim=16, num_queries=8, nheads=2,
                      dim_feedforward=64, dec_layers=2, enc_layers=1, roi_classifier=True)  # fmt: skip
    cfg.depth_fusion.sources = {"res2": "path_3", "res3": "path_3", "res4": "path_4", "res5": "path_4"}
    cfg.depth_fusion.inside_backbone, cfg.depth_fusion.init = True, "open"
    model = build_model(cfg, 3, CHANNELS)
    model.train()
    for _ in range(2):  # live BatchNorm statistics that differ from the initial ones, as after training
        model(torch.rand(4, 3, H, W), {"path_3": torch.randn(4, 8, H // 8, W // 8),
                                       "path_4": torch.randn(4, 5, H // 16, W // 16)})
    return model.eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    valid = torch.ones(B, H, W, dtype=torch.bool)
    valid[1, 40:] = False  # a smaller image padded at the bottom and right of the batch
    valid[1, :, 30:] = False
    return SimpleNamespace(images=torch.rand(B, 3, H, W, generator=g) * valid[:, None], valid=valid,
                           depth=torch.rand(B, 1, H, W, generator=g) * valid[:, None],
                           features={"path_3": torch.randn(B, 8, H // 8, W // 8, generator=g),
                                     "path_4": torch.randn(B, 5, H // 16, W // 16, generator=g)})


def _ctx(depth_pseudo_labels: bool):
    cfg = Config()
    cfg.semi.depth_pseudo_labels = depth_pseudo_labels
    cfg.semi.score_threshold = 0.0  # a random teacher is unsure of everything: keep its queries
    cfg.semi.min_mask_area = 0
    return SimpleNamespace(cfg=cfg, autocast=contextlib.nullcontext(), use_depth=True)


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        assert torch.equal(x["labels"], y["labels"]) and torch.equal(x["masks"], y["masks"])
        for k in set(x) - {"labels", "masks"}:
            torch.testing.assert_close(x[k], y[k], atol=1e-4, rtol=1e-4)


def test_both_views_in_one_forward_give_each_views_own_pseudo_labels():
    teacher, batch, ctx = _teacher(), _batch(), _ctx(True)
    calls = []
    teacher.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    rgb, depth = teacher_pseudo_labels(ctx, teacher, batch)
    assert calls == [2 * B]  # one forward of both views

    label = PseudoLabeler.from_config(ctx.cfg.semi)
    with torch.no_grad():
        alone_rgb = label(teacher(batch.images, batch.features, ~batch.valid), (H, W), batch.valid)
        view = render_depth_view(batch.depth, batch.valid)
        alone_depth = label(teacher(view, batch.features, ~batch.valid), (H, W), batch.valid)
    assert sum(len(p["labels"]) for p in alone_rgb + alone_depth) > 0
    _same(rgb, alone_rgb)
    _same(depth, alone_depth)


def test_without_depth_pseudo_labels_the_teacher_sees_the_rgb_view_only():
    teacher, batch = _teacher(), _batch()
    calls = []
    teacher.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    rgb, depth = teacher_pseudo_labels(_ctx(False), teacher, batch)
    assert calls == [B] and depth is None and len(rgb) == B


def test_the_stage_b_teacher_is_made_in_eval_mode():
    """The batched views rely on it: live BatchNorm would mix the two views' statistics."""
    from dgseg.pipeline.semi.ema import make_teacher

    assert not make_teacher(_teacher().train()).training
