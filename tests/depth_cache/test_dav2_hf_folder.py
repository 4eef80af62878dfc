"""Depth Anything V2 from a Hugging Face model folder: the same function as transformers' own
forward, and the same model as those weights converted to the official `.pth` layout."""

from __future__ import annotations

import json

import pytest
import torch
from dgseg.depth_cache.config import CacheConfig, EstimatorConfig
from dgseg.depth_cache.estimators.depth_anything_v2 import (
    MODEL_CONFIGS,
    WeightsMismatchError,
    build_depth_anything_v2,
)
from dgseg.depth_cache.estimators.hf_depth_anything import HFWeightsError, read_hf_folder
from dgseg.depth_cache.key import key_fields

transformers = pytest.importorskip("transformers")

# transformers 5 names -> the names on disk of the published folders (written by transformers 4)
V4_NAMES = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
            "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense"}


def _hf_tiny(folder):
    """A random Depth Anything V2 of the project's `tiny` size, saved by transformers."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    t = MODEL_CONFIGS["tiny"]
    backbone = Dinov2Config(hidden_size=t["embed_dim"], num_hidden_layers=t["depth"],
                            num_attention_heads=t["num_heads"], intermediate_size=4 * t["embed_dim"],
                            out_indices=[i + 1 for i in t["layer_idx"]],
                            image_size=518, patch_size=14, reshape_hidden_states=False, layerscale_value=1.0)
    cfg = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=list(t["out_channels"]),
                              fusion_hidden_size=t["features"], head_hidden_size=t["head_hidden"],
                              reassemble_hidden_size=t["embed_dim"], patch_size=14, depth_estimation_type="relative")
    torch.manual_seed(0)
    model = DepthAnythingForDepthEstimation(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # transformers initialises some tensors to constants; make every one count
            p.add_(torch.randn_like(p) * 0.02)
        model.head.conv3.bias.fill_(1.0)  # keep the final ReLU from zeroing a random network's depth
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "Depth-Anything-V2-Tiny-hf"
    return folder, _hf_tiny(folder)


def test_hf_folder_computes_what_transformers_computes(hf):
    folder, reference = hf
    ours = build_depth_anything_v2("tiny", weights=folder, input_size=518)
    x = torch.randn(2, 3, 518, 518, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(pixel_values=x).predicted_depth
        got = ours(x).depth
    assert got.shape == expected.shape and float(expected.abs().max()) > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_hf_folder_and_its_official_pth_give_the_same_model_and_depth_source(hf, tmp_path):
    folder, _ = hf
    state, _ = read_hf_folder(folder)
    pth = tmp_path / "depth_anything_v2_tiny.pth"
    torch.save(state, pth)
    a = build_depth_anything_v2("tiny", weights=folder, input_size=126)
    b = build_depth_anything_v2("tiny", weights=pth, input_size=126)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    x = torch.randn(1, 3, 126, 168)
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    assert torch.equal(out_a.depth, out_b.depth)
    assert all(torch.equal(out_a.features[k], out_b.features[k]) for k in out_a.features)
    # the weights option takes either; a folder's cache key is the sha256 of its tensors file
    key_hf = key_fields(EstimatorConfig(name="depth-anything-v2-vits", weights=str(folder)), CacheConfig())
    key_pth = key_fields(EstimatorConfig(name="depth-anything-v2-vits", weights=str(pth)), CacheConfig())
    assert "hf_weights_sha256" in key_hf and "weights_sha256" in key_pth


def _renamed_folder(src, dst, tensors, renames):
    from safetensors.torch import save_file

    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    out = {}
    for k, v in tensors.items():
        for new, old in renames.items():
            k = k.replace(new, old)
        out[k] = v
    save_file(out, dst / "model.safetensors")
    return out.keys()


def test_transformers_4_and_5_names_read_the_same(hf, tmp_path):
    """The published folders hold transformers 4's names; transformers 5 models name them anew."""
    from safetensors.torch import load_file

    folder, _ = hf
    tensors = load_file(folder / "model.safetensors")
    v4 = _renamed_folder(folder, tmp_path / "v4", tensors, V4_NAMES)
    v5 = _renamed_folder(folder, tmp_path / "v5", tensors, {old: new for new, old in V4_NAMES.items()})
    assert any("attention.attention.query" in k for k in v4) and any("attention.q_proj" in k for k in v5)
    a, b = read_hf_folder(tmp_path / "v4")[0], read_hf_folder(tmp_path / "v5")[0]
    assert a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


def test_a_folder_that_does_not_fit_is_refused_naming_it(hf, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = hf
    tensors = load_file(folder / "model.safetensors")
    extra, missing = tmp_path / "extra", tmp_path / "missing"
    for bad in (extra, missing):
        bad.mkdir()
        (bad / "config.json").write_text((folder / "config.json").read_text())
    save_file({**tensors, "neck.extra.weight": torch.zeros(1)}, extra / "model.safetensors")
    with pytest.raises(HFWeightsError, match=r"extra/model.safetensors.*neck\.extra\.weight"):
        build_depth_anything_v2("tiny", weights=extra)
    save_file({k: v for k, v in tensors.items() if not k.startswith("head.conv3")}, missing / "model.safetensors")
    with pytest.raises(WeightsMismatchError, match=r"(?s)missing.*missing keys.*output_conv2\.2"):
        build_depth_anything_v2("tiny", weights=missing)
    with pytest.raises(WeightsMismatchError, match="(?s)vits.*fits 'tiny'"):
        build_depth_anything_v2("vits", weights=folder)
    cfg = json.loads((folder / "config.json").read_text())
    (missing / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (missing / "config.json").write_text(json.dumps({**cfg, "backbone_config": {**cfg["backbone_config"],
                                                                                 "out_indices": [2, 3, 4, 4]}}))
    with pytest.raises(HFWeightsError, match=r"out_indices \[2, 3, 4, 4\].*expected \[1, 2, 3, 4\]"):
        build_depth_anything_v2("tiny", weights=missing)  # right shapes, other blocks tapped
    cfg["depth_estimation_type"] = "metric"
    (extra / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFWeightsError, match="metric"):
        build_depth_anything_v2("tiny", weights=extra)
    with pytest.raises(HFWeightsError, match="config.json missing"):
        build_depth_anything_v2("tiny", weights=tmp_path)


class _Pickled:
    pass


def test_a_pickled_pth_is_refused_without_unsafe_advice(tmp_path):
    torch.save({"model": {}, "extra": _Pickled()}, tmp_path / "obj.pth")
    with pytest.raises(ValueError, match="obj.pth") as err:
        build_depth_anything_v2("tiny", weights=tmp_path / "obj.pth")
    assert "_Pickled" in str(err.value) and "weights_only=False" not in str(err.value)
