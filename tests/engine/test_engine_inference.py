"""`predict_loader` runs under `torch.inference_mode()`: evaluation records no autograd graph."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from dgseg.pipeline.config import EvalConfig
from dgseg.pipeline.engine.inference import predict_loader
from torch import nn


class _TinySegmenter(nn.Module):
    """Trainable logits and masks from the image, shaped as Mask2Former's outputs."""

    mask_stride = 4

    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Conv2d(3, 3, 1)
        self.seen: list[tuple[bool, bool]] = []  # (inference mode on, output requires grad) per forward

    def forward(self, images, depth_features=None, mask=None) -> dict:
        small = nn.functional.avg_pool2d(images, 4)
        masks = self.cls(small)  # (B, Q=3, h, w)
        logits = masks.mean((2, 3))[..., None].repeat(1, 1, 3)  # (B, Q, K+1 = 3)
        self.seen.append((torch.is_inference_mode_enabled(), masks.requires_grad))
        return {"pred_logits": logits, "pred_masks": masks}


@dataclass
class _Batch:
    images: torch.Tensor
    valid: torch.Tensor
    orig_sizes: list
    image_ids: list
    features: dict | None = None

    def to(self, device):
        return self


class _NoDepth:
    def fill(self, batch) -> None:
        pass


def _loader():
    return [_Batch(torch.rand(2, 3, 16, 16), torch.ones(2, 16, 16, dtype=torch.bool), [(16, 16)] * 2, [1, 2])]


def test_predict_loader_records_no_graph_and_restores_the_mode():
    model = _TinySegmenter().train()
    preds = predict_loader(model, _loader(), torch.device("cpu"), _NoDepth(), EvalConfig(max_detections=3), False,
                           show_progress=False)  # fmt: skip
    assert [i for i, _ in preds] == ["1", "2"]
    assert model.seen == [(True, False)]
    assert all(v.is_inference() for _, p in preds for v in p.values())
    assert model.training  # back in training mode for the next step
    # the training step after an evaluation still builds its graph
    model(torch.rand(1, 3, 16, 16))["pred_masks"].sum().backward()
    assert model.cls.weight.grad is not None


def test_predict_loader_restores_training_mode_when_inference_fails():
    model = _TinySegmenter().train()
    bad = [_Batch(torch.rand(2, 3, 16, 16), torch.ones(2, 16, 16, dtype=torch.bool), [(16, 16)], [1, 2])]
    with pytest.raises(ValueError):
        predict_loader(model, bad, torch.device("cpu"), _NoDepth(), EvalConfig(), False, show_progress=False)
    assert model.training
