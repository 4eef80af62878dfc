"""Two-stage query initialisation: the queries start from the top-scored pixel-decoder tokens."""

from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.model.transformer_decoder import MaskedTransformerDecoder


def _decoder(query_init: str, num_queries: int = 4) -> MaskedTransformerDecoder:
    torch.manual_seed(0)
    return MaskedTransformerDecoder(in_channels=16, num_classes=3, hidden_dim=16, num_queries=num_queries, nheads=2,
                                    dim_feedforward=32, dec_layers=2, mask_dim=16, query_init=query_init).eval()


def _inputs(b: int = 2):
    torch.manual_seed(1)
    feats = [torch.randn(b, 16, 2, 3), torch.randn(b, 16, 4, 6), torch.randn(b, 16, 8, 12)]
    return feats, torch.randn(b, 16, 16, 24)


def test_encoder_queries_are_the_top_scored_tokens():
    dec = _decoder("encoder")
    feats, mask_features = _inputs()
    src = [(dec.input_proj[i](x).flatten(2) + dec.level_embed.weight[i][None, :, None]).permute(2, 0, 1)
           for i, x in enumerate(feats)]
    queries, (logits, masks, _) = dec._select_queries(src, [None] * 3, mask_features, None, feats[0].shape[-2:])
    memory = dec.enc_norm(dec.enc_output(torch.cat(src)))
    scores = dec.class_embed(dec.decoder_norm(memory))[..., :-1].max(-1).values
    for b in range(2):
        top = scores[:, b].topk(4).indices
        assert torch.allclose(queries[:, b], memory[top, b])
    assert not queries.requires_grad  # detached, as in MaskDINO: only the first output trains the selection
    assert logits.shape == (2, 4, 4) and masks.shape == (2, 4, 16, 24)
    # the first (auxiliary) output is those tokens' predictions, so the selection is supervised
    out = dec(feats, mask_features)
    assert torch.allclose(out["aux_outputs"][0]["pred_logits"], logits, atol=1e-6)


def test_encoder_queries_depend_on_the_image_and_learned_do_not():
    feats, mask_features = _inputs()
    for kind, differ in (("encoder", True), ("learned", False)):
        dec = _decoder(kind)
        first = dec(feats, mask_features)["aux_outputs"][0]["pred_logits"]
        # the learned queries' first predictions are the same for every image (no attention yet)
        assert (not torch.allclose(first[0], first[1])) == differ, kind


def test_fewer_tokens_than_queries_and_bad_value():
    dec = _decoder("encoder", num_queries=100)  # 6 + 24 + 96 = 126 tokens >= 100
    feats, mask_features = _inputs()
    assert dec(feats, mask_features)["pred_logits"].shape == (2, 100, 4)
    small = [f[..., :1, :1] for f in feats]
    assert dec(small, mask_features)["pred_logits"].shape == (2, 100, 4)  # 3 tokens + 97 learned queries
    with pytest.raises(ValueError, match="query_init"):
        _decoder("topk")


def test_padding_tokens_are_never_chosen():
    dec = _decoder("encoder")
    feats, mask_features = _inputs()
    src = [(dec.input_proj[i](x).flatten(2) + dec.level_embed.weight[i][None, :, None]).permute(2, 0, 1)
           for i, x in enumerate(feats)]
    memory = dec.enc_norm(dec.enc_output(torch.cat(src)))
    scores = dec.class_embed(dec.decoder_norm(memory))[..., :-1].max(-1).values  # (N, B)
    # mark the 4 best tokens of every image as padding
    padded = torch.zeros_like(scores, dtype=torch.bool)
    padded.scatter_(0, scores.topk(4, dim=0).indices, True)
    pads, start = [], 0
    for x in feats:
        n = x.shape[-2] * x.shape[-1]
        pads.append(padded[start:start + n].transpose(0, 1).reshape(2, *x.shape[-2:]))
        start += n
    queries, _ = dec._select_queries(src, pads, mask_features, None, feats[0].shape[-2:])
    for b in range(2):
        allowed = scores[:, b].masked_fill(padded[:, b], float("-inf")).topk(4).indices
        assert torch.allclose(queries[:, b], memory[allowed, b])
