"""Our Depth Anything V2 against the reference made with the official code (random weights).

The fixture (`../shared/fixtures/depth_anything_v2_vits/`, see its README) gives the weight
generation rule, state-dict manifests for every size, two inputs and every intermediate tensor.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from dgseg.depth_cache.estimators.depth_anything_v2 import (
    MODEL_CONFIGS,
    DepthAnythingV2,
    WeightsMismatchError,
    build_depth_anything_v2,
)

FIXTURE = "fixtures/depth_anything_v2_vits"
MANIFESTS = {
    "vits": "state_dict_manifest.json",
    "vitb": "state_dict_manifest_vitb.json",
    "vitl": "state_dict_manifest_vitl.json",
    "vitg": "state_dict_manifest_vitg.json",
}
ONE_PLUS = (re.compile(r"(^|\.)norm\d?\.weight$"), re.compile(r"\.ls[12]\.gamma$"))
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def fixture_dir():
    # module scope (the model is built once), so the function-scoped `shared_dir` cannot be used
    path = Path(__file__).resolve().parents[2].parent / "shared" / FIXTURE
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


def _manifest(fixture_dir, size: str) -> list[tuple[str, tuple[int, ...]]]:
    entries = json.loads((fixture_dir / MANIFESTS[size]).read_text())
    return [(key, tuple(shape)) for key, shape, _dtype in entries]


def _reference_weights(manifest: list[tuple[str, tuple[int, ...]]]) -> tuple[dict[str, torch.Tensor], str]:
    """The README's rule: per key a crc32-seeded randn * 0.02, plus 1 for norm weights and gammas."""
    state_dict, digest = {}, hashlib.sha256()
    for key, shape in sorted(manifest):
        g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
        value = torch.randn(shape, generator=g, dtype=torch.float32) * 0.02
        if any(p.search(key) for p in ONE_PLUS):
            value = 1.0 + value
        state_dict[key] = value
        digest.update(key.encode("utf-8"))
        digest.update(value.numpy().astype("<f4").tobytes())
    return state_dict, digest.hexdigest()


@pytest.fixture(scope="module")
def reference_model(fixture_dir):
    state_dict, digest = _reference_weights(_manifest(fixture_dir, "vits"))
    fingerprint = json.loads((fixture_dir / "weights_fingerprint.json").read_text())
    overall = next(v for k, v in fingerprint.items() if k.startswith("all_sha256"))
    assert digest == overall, "regenerated weights differ from the fixture's"
    model = build_depth_anything_v2("vits")
    model.load_state_dict(state_dict, strict=True)
    return model


def _run_with_hooks(model: DepthAnythingV2, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every tensor the fixture saved, named as in reference.npz, captured from one forward."""
    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda _module, _args, out: captured.__setitem__(name, out)

    head = model.depth_head
    def keep_input(_module, args):
        captured["tokens_in"] = args[0]

    hooks = [
        model.pretrained.blocks[0].register_forward_pre_hook(keep_input),
        model.pretrained.register_forward_hook(keep("encoded")),
    ]
    for k in range(1, 5):
        hooks.append(head.resize_layers[k - 1].register_forward_hook(keep(f"layer_{k}")))
        hooks.append(getattr(head.scratch, f"layer{k}_rn").register_forward_hook(keep(f"layer_{k}_rn")))
        hooks.append(getattr(head.scratch, f"refinenet{k}").register_forward_hook(keep(f"hook_path_{k}")))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    for i, (tokens, cls) in enumerate(captured.pop("encoded")):
        captured[f"enc_tokens_{i}"] = tokens
        captured[f"enc_cls_{i}"] = cls
    for k in range(1, 5):  # the maps handed out are the refinenets' outputs themselves
        assert out.features[f"path_{k}"] is captured.pop(f"hook_path_{k}")
    captured.update(out.features)
    captured["depth"] = out.depth
    return captured


@pytest.mark.parametrize("case", ["h266w364", "h518w518"])
def test_every_saved_tensor_matches_the_official_model(fixture_dir, reference_model, case):
    reference = np.load(fixture_dir / "reference.npz")  # lazy: arrays are read one by one
    keys = [k for k in reference.files if k.startswith(case + "__") and not k.endswith("__input")]
    ours = _run_with_hooks(reference_model, torch.from_numpy(reference[case + "__input"]))
    assert len(keys) == (22 if case == "h266w364" else 11)
    errors = {}
    for key in keys:
        name = key.split("__", 1)[1]
        ref = torch.from_numpy(reference[key])
        got = ours[name]
        assert got.shape == ref.shape, f"{name}: {tuple(got.shape)} vs {tuple(ref.shape)}"
        errors[name] = ((got - ref).norm() / ref.norm()).item()
    bad = {k: v for k, v in errors.items() if not v <= REL_TOL}
    assert not bad, f"relative errors above {REL_TOL}: {bad}"
    # depth is a near-constant offset plus a small signal: judge it against its spread too
    ref_depth = torch.from_numpy(reference[case + "__depth"])
    assert ((ours["depth"] - ref_depth).abs().max() / ref_depth.std()).item() < 1e-3


@pytest.mark.parametrize("size", ["vits", "vitb", "vitl", "vitg"])
def test_state_dict_keys_and_shapes_equal_the_official_manifest(fixture_dir, size):
    with torch.device("meta"):  # no memory for vitl/vitg
        model = DepthAnythingV2(**MODEL_CONFIGS[size])
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == _manifest(fixture_dir, size)


def test_weights_of_another_size_fail_before_loading_with_named_keys(fixture_dir, tmp_path, monkeypatch):
    # vitb-shaped tensors as stride-0 views of one element: the file stays a few KB
    one = torch.zeros(1)
    vitb = {key: one.expand(shape) for key, shape in _manifest(fixture_dir, "vitb")}
    path = tmp_path / "depth_anything_v2_vitb.pth"
    torch.save({"model": vitb}, path)

    def no_loading(*_args, **_kwargs):
        raise AssertionError("load_state_dict reached with mismatching weights")

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", no_loading)
    with pytest.raises(WeightsMismatchError) as err:
        build_depth_anything_v2("vits", weights=path)
    message = str(err.value)
    assert str(path) in message
    assert "it fits 'vitb'" in message
    vits = dict(_manifest(fixture_dir, "vits"))
    n_differing = sum(tuple(v.shape) != vits[k] for k, v in vitb.items())
    assert n_differing > 200
    assert f"{n_differing} shape mismatches (first 10 shown)" in message
    assert "missing keys" not in message and "unexpected keys" not in message
    assert "pretrained.cls_token: file (1, 1, 768) vs model (1, 1, 384)" in message
    assert len(message.splitlines()) < 20  # a summary, not torch's wall of text
