"""model.activation_checkpointing: the same gradients, fewer activations kept for backward."""

from __future__ import annotations

import torch
from dgseg.pipeline.config.loading import load_config
from dgseg.pipeline.model.build import build_model


def _model(checkpointing: bool):
    cfg = load_config(None, ["model.hidden_dim=32", "model.mask_dim=32", "model.num_queries=4", "model.nheads=2",
                             "model.dim_feedforward=64", "model.dec_layers=2", "model.enc_layers=2",
                             "model.backbone_norm=frozen", "model.depth_fusion.enabled=false",
                             f"model.activation_checkpointing={checkpointing}"])
    torch.manual_seed(0)
    return build_model(cfg.model, num_classes=3, depth_channels={})


def _grads_and_saved_bytes(model, images, pad):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(images, None, pad)
    loss = out["pred_masks"].square().mean() + out["pred_logits"].square().mean()
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}, sum(saved)


def test_checkpointing_gives_the_same_gradients_and_keeps_fewer_activations():
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    pad = torch.zeros(2, 64, 96, dtype=torch.bool)
    pad[1, :, 64:] = True  # a padded image exercises the masked paths too
    plain, plain_bytes = _grads_and_saved_bytes(_model(False), images, pad)
    ckpt, ckpt_bytes = _grads_and_saved_bytes(_model(True), images, pad)
    assert plain.keys() == ckpt.keys()
    assert any(k.startswith("backbone.") for k in plain) and any(k.startswith("pixel_decoder.encoder") for k in plain)
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=0, atol=0, msg=f"gradient of {k}")
    assert ckpt_bytes < 0.6 * plain_bytes


def test_checkpointing_is_off_without_grad():
    model = _model(True).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64), None, torch.zeros(1, 64, 64, dtype=torch.bool))
    assert out["pred_masks"].shape[:2] == (1, 4)
