"""Depth Anything V2 (Yang et al. 2024, "Depth Anything V2"): a DINOv2 encoder plus a DPT head.

Computes the same function as the official implementation (checked against a reference made
with it, `tests/depth_cache/test_dav2_fixture.py`) and loads its checkpoints
(`depth_anything_v2_{vits,vitb,vitl,vitg}.pth`) with `strict=True`: the module names are the
official ones (`pretrained.*`, `depth_head.*`), so no key mapping is needed beyond unwrapping.
A Hugging Face folder (`Depth-Anything-V2-*-hf`) is mapped onto those names (`hf_depth_anything`).
Besides depth it returns the DPT decoder's fused maps `path_4..path_1` for the depth cache.
The model is frozen: always in eval mode, no gradients.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from dgseg.depth_cache.estimators.base import DepthEstimator, DepthOutput, FeatureInfo, Preprocess
from dgseg.depth_cache.estimators.dinov2 import DinoVisionTransformer
from dgseg.depth_cache.estimators.dpt import DPTHead
from dgseg.depth_cache.estimators.hf_depth_anything import check_hf_config, read_hf_folder
from dgseg.weights_io import load_error_reason

# Official model configs (run.py's `model_configs`) plus a small one of the same architecture.
MODEL_CONFIGS: dict[str, dict] = {
    "vits": dict(embed_dim=384, depth=12, num_heads=6, ffn="mlp", features=64,
                 out_channels=(48, 96, 192, 384), layer_idx=(2, 5, 8, 11)),
    "vitb": dict(embed_dim=768, depth=12, num_heads=12, ffn="mlp", features=128,
                 out_channels=(96, 192, 384, 768), layer_idx=(2, 5, 8, 11)),
    "vitl": dict(embed_dim=1024, depth=24, num_heads=16, ffn="mlp", features=256,
                 out_channels=(256, 512, 1024, 1024), layer_idx=(4, 11, 17, 23)),
    "vitg": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu", features=384,
                 out_channels=(1536, 1536, 1536, 1536), layer_idx=(9, 19, 29, 39)),
    # for tests and the demo: milliseconds per 126-px image on a CPU
    "tiny": dict(embed_dim=48, depth=4, num_heads=3, ffn="mlp", features=16,
                 out_channels=(8, 16, 32, 48), layer_idx=(0, 1, 2, 3), head_hidden=8),
}  # fmt: skip

# Fused decoder maps, coarse to fine, and their upsampling w.r.t. the patch grid.
LEVELS: tuple[str, ...] = ("path_4", "path_3", "path_2", "path_1")
LEVEL_UPSAMPLING = {"path_4": 1, "path_3": 2, "path_2": 4, "path_1": 8}


class WeightsMismatchError(ValueError):
    """A weights file whose keys or shapes do not fit the chosen model size."""


class DepthAnythingV2(DepthEstimator):
    """forward(x (B, 3, H, W) normalised, H and W multiples of 14) -> DepthOutput(
    depth (B, H, W) relative inverse depth >= 0, features {level: (B, features, H/s, W/s)})
    for the requested `levels` (s = 14, 7, 3.5, 1.75 for path_4..path_1)."""

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        ffn: str,
        features: int,
        out_channels: Sequence[int],
        layer_idx: Sequence[int],
        head_hidden: int = 32,
        patch_size: int = 14,
        input_size: int = 518,
        levels: Sequence[str] = LEVELS,
        name: str = "depth-anything-v2",
    ) -> None:
        super().__init__()
        unknown = [lv for lv in levels if lv not in LEVEL_UPSAMPLING]
        if unknown:
            raise ValueError(f"unknown feature levels {unknown}; expected some of {list(LEVELS)}")
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} must be a multiple of the patch size {patch_size}")
        self.name = name
        self.patch_size = patch_size
        self.layer_idx = tuple(layer_idx)
        self.levels = tuple(lv for lv in LEVELS if lv in levels)  # always coarse to fine
        self.feature_info = [FeatureInfo(lv, features, patch_size / LEVEL_UPSAMPLING[lv]) for lv in self.levels]
        self.preprocess = Preprocess(input_size=input_size, multiple_of=patch_size)
        self.pretrained = DinoVisionTransformer(
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, ffn=ffn, patch_size=patch_size
        )
        self.depth_head = DPTHead(
            embed_dim, features=features, out_channels=out_channels, patch_size=patch_size, head_hidden=head_hidden
        )

    def train(self, mode: bool = True) -> DepthAnythingV2:
        # frozen estimator: a parent module switching to training must not change it
        return super().train(False)

    def forward(self, x: torch.Tensor) -> DepthOutput:
        h, w = x.shape[-2:]
        if x.dim() != 4 or h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"expected (B, 3, H, W) with H, W multiples of {self.patch_size}, got {tuple(x.shape)}"
            )
        encoded = self.pretrained(x, self.layer_idx)
        # the head never uses the class tokens (the official default use_clstoken=False)
        depth, paths = self.depth_head([tokens for tokens, _ in encoded], h // self.patch_size, w // self.patch_size)
        # every path feeds depth, so all are computed; only the requested ones are handed out
        return DepthOutput(depth=F.relu(depth).squeeze(1), features={lv: paths[lv] for lv in self.levels})


def _freeze(model: DepthAnythingV2) -> DepthAnythingV2:
    model.eval()
    model.requires_grad_(False)
    return model


def _config(size: str) -> dict:
    if size not in MODEL_CONFIGS:
        raise ValueError(f"unknown Depth Anything V2 size {size!r}; expected one of {sorted(MODEL_CONFIGS)}")
    return dict(MODEL_CONFIGS[size])


def _meta_model(size: str, **kwargs: object) -> DepthAnythingV2:
    """The architecture without memory (for shape checks and as the target of `assign` loading)."""
    with torch.device("meta"):
        return DepthAnythingV2(**_config(size), **kwargs)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from an official or re-saved checkpoint (bare, or under "model"/"state_dict";
    a DataParallel "module." prefix is dropped), or from a Hugging Face model folder (mapped onto the
    official names). Loaded with `weights_only=True` / safetensors (untrusted files)."""
    path = Path(path)
    if path.is_dir():
        return read_hf_folder(path)[0]
    if not path.is_file():
        raise FileNotFoundError(f"Depth Anything V2 weights file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file
        raise ValueError(f"cannot read weights file {path}: {load_error_reason(e)}") from e
    for wrapper in ("model", "state_dict"):
        if isinstance(ckpt, Mapping) and isinstance(ckpt.get(wrapper), Mapping):
            ckpt = ckpt[wrapper]
    if not isinstance(ckpt, Mapping) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"weights file {path} holds no state dict of tensors")
    if ckpt and all(k.startswith("module.") for k in ckpt):
        ckpt = {k[len("module."):]: v for k, v in ckpt.items()}
    return dict(ckpt)


def state_dict_mismatch(
    expected: Mapping[str, torch.Size | Sequence[int]], found: Mapping[str, torch.Size | Sequence[int]]
) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, "key: file shape vs model shape" lines)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: file {tuple(found[k])} vs model {tuple(expected[k])}"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    return missing, unexpected, shapes


def _summary(title: str, items: list[str], first: int = 10) -> str:
    more = f" (first {first} shown)" if len(items) > first else ""
    return f"{len(items)} {title}{more}:\n    " + "\n    ".join(items[:first])


def check_weights(state_dict: Mapping[str, torch.Tensor], size: str, path: str | Path) -> None:
    """Raises WeightsMismatchError with a short summary when `state_dict` does not fit `size`."""
    expected = _shapes(size)
    found = {k: v.shape for k, v in state_dict.items()}
    missing, unexpected, shapes = state_dict_mismatch(expected, found)
    if not (missing or unexpected or shapes):
        return
    fits = [s for s in MODEL_CONFIGS if s != size and not any(state_dict_mismatch(_shapes(s), found))]
    parts = [f"weights file {path} does not match Depth Anything V2 {size!r}"]
    if fits:
        parts[0] += f" (it fits {', '.join(repr(s) for s in fits)})"
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            parts.append(_summary(title, items))
    raise WeightsMismatchError("\n  ".join(parts))


def _shapes(size: str) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in _meta_model(size).state_dict().items()}


def build_depth_anything_v2(
    size: str, weights: str | Path | None = None, input_size: int = 518, levels: Sequence[str] = LEVELS
) -> DepthAnythingV2:
    """Depth Anything V2 of `size` (vits, vitb, vitl, vitg), frozen, on the CPU in float32.

    With `weights` (an official `.pth` or a Hugging Face folder), the file is read and checked
    against the architecture before anything is allocated (a mismatch raises WeightsMismatchError
    naming keys and shapes); without, the weights are random (for benchmarks and tests only).
    """
    cfg = _config(size)
    kwargs = dict(input_size=input_size, levels=levels, name=f"depth-anything-v2-{size}")
    if weights is None:
        return _freeze(DepthAnythingV2(**cfg, **kwargs))
    hf_config = None
    if Path(weights).is_dir():
        state_dict, hf_config = read_hf_folder(weights)
    else:
        state_dict = read_checkpoint(weights)
    check_weights(state_dict, size, weights)  # first: the shapes name the size that would fit
    if hf_config is not None:
        check_hf_config(hf_config, cfg["layer_idx"], size, Path(weights))
    model = _meta_model(size, **kwargs)
    # assign: the loaded tensors become the parameters (no second copy, no random init of 1B params)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return _freeze(model.float())


def build_tiny(seed: int = 0, input_size: int = 126, levels: Sequence[str] = LEVELS) -> DepthAnythingV2:
    """The `tiny` configuration, randomly initialised from `seed` (the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DepthAnythingV2(**_config("tiny"), input_size=input_size, levels=levels, name="tiny")
        # a positive output bias keeps the final ReLUs from zeroing a random network's depth
        torch.nn.init.constant_(model.depth_head.scratch.output_conv2[2].bias, 1.0)
    return _freeze(model)


def weights_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 of a weights file, read in chunks (checkpoints reach 1.3 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def tiny_fingerprint(seed: int = 0) -> str:
    """What identifies the weights of `build_tiny(seed)`: its configuration and seed."""
    text = json.dumps({"config": MODEL_CONFIGS["tiny"], "seed": seed}, sort_keys=True)
    return "tiny-" + hashlib.sha256(text.encode()).hexdigest()
