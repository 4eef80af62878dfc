"""The Depth Anything V2 estimator with the `tiny` configuration: outputs, levels, freezing,
weight files (loading, mismatch messages, bad files) and the weights hash."""

from __future__ import annotations

import hashlib

import pytest
import torch
from dgseg.depth_cache.estimators.depth_anything_v2 import (
    LEVELS,
    WeightsMismatchError,
    build_depth_anything_v2,
    build_tiny,
    tiny_fingerprint,
    weights_sha256,
)


def _input(h: int = 126, w: int = 168, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(7))


def test_feature_info_matches_what_forward_returns():
    model = build_tiny()
    x = _input(126, 168)
    with torch.no_grad():
        out = model(x)
    assert out.depth.shape == (2, 126, 168)
    assert [f.name for f in model.feature_info] == list(out.features) == list(LEVELS)
    for info in model.feature_info:
        fmap = out.features[info.name]
        # the stride maps the input size onto the map size exactly (14, 7, 3.5, 1.75)
        assert fmap.shape == (2, info.channels, 126 / info.stride, 168 / info.stride), info
    assert [f.stride for f in model.feature_info] == [14, 7, 3.5, 1.75]


def test_depth_is_positive_and_varies_over_the_image():
    with torch.no_grad():
        depth = build_tiny()(_input()).depth
    assert torch.isfinite(depth).all() and (depth >= 0).all()
    assert (depth > 0).float().mean() > 0.9  # a random net must not be silenced by the final ReLU
    assert depth[0].std() > 1e-4 * depth[0].mean()


def test_levels_choose_the_returned_maps_without_changing_depth():
    x = _input()
    full, partial = build_tiny(seed=3), build_tiny(seed=3, levels=["path_3", "path_4"])
    with torch.no_grad():
        a, b = full(x), partial(x)
    assert list(b.features) == ["path_4", "path_3"]  # coarse to fine, whatever the order asked
    assert [f.name for f in partial.feature_info] == ["path_4", "path_3"]
    torch.testing.assert_close(a.depth, b.depth, rtol=0, atol=0)
    torch.testing.assert_close(a.features["path_3"], b.features["path_3"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="path_5"):
        build_tiny(levels=["path_5"])


def test_tiny_is_seeded_frozen_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = build_tiny(seed=0), build_tiny(seed=0), build_tiny(seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["pretrained.pos_embed"], sc["pretrained.pos_embed"])
    assert tiny_fingerprint(0) != tiny_fingerprint(1) and tiny_fingerprint(0) == tiny_fingerprint(0)
    assert not any(p.requires_grad for p in a.parameters())
    torch.nn.Sequential(a).train()  # a parent switching to training must not un-freeze it
    assert not a.training


def test_input_sides_must_be_multiples_of_the_patch():
    with pytest.raises(ValueError, match="multiples of 14"):
        build_tiny()(torch.zeros(1, 3, 126, 130))


def test_weights_file_roundtrip_nested_and_prefixed(tmp_path):
    reference = build_tiny(seed=5)
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    loaded = build_depth_anything_v2("tiny", weights=path, input_size=126, levels=["path_4"])
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in loaded.state_dict().values())
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).depth, reference(x).depth, rtol=0, atol=0)


def test_missing_and_unexpected_keys_are_summarised(tmp_path):
    state = build_tiny().state_dict()
    dropped = [k for k in state if ".blocks.1." in k][:12]
    assert len(dropped) == 12
    for k in dropped:
        del state[k]
    state.update({f"extra.{i}": torch.zeros(1) for i in range(3)})
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsMismatchError) as err:
        build_depth_anything_v2("tiny", weights=path)
    message = str(err.value)
    assert str(path) in message
    assert "12 missing keys (first 10 shown)" in message and dropped[0] in message and dropped[11] not in message
    assert "3 unexpected keys:" in message and "extra.2" in message


def test_missing_or_unreadable_weights_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_depth_anything_v2("vits", weights=tmp_path / "nowhere.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth"):
        build_depth_anything_v2("vits", weights=garbage)
    not_tensors = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(ValueError, match="no state dict"):
        build_depth_anything_v2("vits", weights=not_tensors)
    with pytest.raises(ValueError, match="vitx"):
        build_depth_anything_v2("vitx")


def test_weights_sha256_streams_the_whole_file(tmp_path):
    path = tmp_path / "w.bin"
    data = bytes(range(256)) * 1000 + b"tail"
    path.write_bytes(data)
    assert weights_sha256(path, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()


def test_swiglu_ffn_of_vitg_computes_silu_gate_times_value():
    from dgseg.depth_cache.estimators.dinov2 import SwiGLUFFN

    ffn = SwiGLUFFN(in_features=24, hidden_features=96)  # DINOv2 width: int(96 * 2/3) rounded up to 8 = 64
    assert ffn.w12.weight.shape == (128, 24) and ffn.w3.weight.shape == (24, 64)
    x = torch.randn(2, 5, 24)
    a, b = (x @ ffn.w12.weight.T + ffn.w12.bias).split(64, dim=-1)
    expected = (a * torch.sigmoid(a) * b) @ ffn.w3.weight.T + ffn.w3.bias
    torch.testing.assert_close(ffn(x), expected)
