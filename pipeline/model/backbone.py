"""The backbone: any timm model with `features_only`, exposing levels res2..res5 (strides 4..32).

Weights are never downloaded: a checkpoint, if given, is a local `.pth` or `.safetensors` file read
by timm's `load_state_dict` with `weights_only=True` (weight files are untrusted), checked strictly
against the timm model (a clear error when its keys or shapes do not fit), and loaded by timm's
own pretrained path, which maps the classification model's names onto the features_only wrapper.

BatchNorm is frozen by default with pretrained weights (`FrozenBatchNorm2d`, as Mask2Former and
Guided Distillation): the ImageNet statistics and affine stay fixed, so the few images per GPU at
paper scale never supply a batch statistic, the depth view (which runs through the same backbone)
never mixes its statistics into the RGB ones, and teacher (eval mode) and student (train mode)
normalise alike. A random-initialised backbone keeps live BatchNorm by default: frozen at its
initial statistics (mean 0, variance 1) it would be an identity, leaving a deep ResNet unnormalised.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import timm
import torch
from dgseg.weights_io import load_error_reason
from timm.layers import freeze_batch_norm_2d
from timm.models import load_state_dict as timm_load_state_dict
from timm.models._features import FeatureDictNet
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

LEVEL_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def _check_name(name: str) -> None:
    names = timm.list_models()
    if name.split(".")[0] not in names:  # "resnet50.a1_in1k": a pretrained tag names the architecture too
        close = difflib.get_close_matches(name, names, n=8, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm backbone {name!r}{hint}")


def read_timm_weights(name: str, path: str | Path) -> dict[str, Tensor]:
    """The state dict of a local timm checkpoint (`.pth`/`.pth.tar` or `.safetensors`, bare or under
    state_dict/model/EMA keys, "module." dropped: timm's own `load_state_dict`), checked strictly
    against the classification model `name`: its head's keys may be absent, nothing else may differ."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} does not exist")
    try:
        state = timm_load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle with objects that weights_only refuses
        raise ValueError(f"cannot read backbone weights {path}: {load_error_reason(exc)}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"backbone weights {path} are not a state dict of tensors")
    with torch.device("meta"):  # names and shapes only, no memory
        ref = timm.create_model(name, pretrained=False)
    head = ref.pretrained_cfg.get("classifier") or ()
    heads = (head,) if isinstance(head, str) else tuple(head)
    own = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    optional = {k for k in own if k.split(".")[0] in heads or any(k.startswith(h + ".") for h in heads)}
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {own[k]}" for k in own
              if k in state and tuple(state[k].shape) != own[k] and k not in optional]
    if missing or unexpected or shapes:
        parts = [f"{len(items)} {title} (e.g. {items[:3]})" for title, items in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
        raise ValueError(f"backbone weights {path} do not fit timm model {name!r}: " + "; ".join(parts))
    return {k: v for k, v in state.items() if k not in optional}


RANDOM_INIT_WARN_PARAMS = 15_000_000  # resnet18 (11M) is the demo's random-init backbone; resnet50 has 24M


def warn_random_init(name: str, body: nn.Module) -> None:
    """A paper-size backbone without weights is almost always a mistake: Mask2Former and Guided
    Distillation start from ImageNet weights, and random init costs many AP points at paper scale."""
    n = sum(p.numel() for p in body.parameters())
    if n >= RANDOM_INIT_WARN_PARAMS:
        warnings.warn(
            f"backbone {name!r} ({n / 1e6:.0f}M parameters) starts from RANDOM weights because "
            "model.backbone_weights is null; paper-scale recipes start from ImageNet weights. Point "
            "model.backbone_weights at a local timm/torchvision checkpoint (README: 'Backbone weights')",
            stacklevel=3,
        )


class Backbone(nn.Module):
    """timm feature extractor returning {"res2": (B, C2, H/4, W/4), ..., "res5": (B, C5, H/32, W/32)}.

    Args:
        name: a timm model name (resnet18 for tests and demos, resnet50 at paper scale).
        weights: local checkpoint of that timm model (the classification head's keys are ignored);
            None = random initialisation.
        norm: "frozen" (BatchNorm -> FrozenBatchNorm2d, after loading the weights), "batch" (live),
            "auto" = frozen when `weights` is given, live otherwise.
    """

    def __init__(self, name: str = "resnet50", weights: Optional[str] = None, norm: str = "auto") -> None:
        super().__init__()
        _check_name(name)
        self.name = name
        self.body = timm.create_model(name, pretrained=False, features_only=True)
        reductions = self.body.feature_info.reduction()
        channels = self.body.feature_info.channels()
        self._index: dict[str, int] = {}
        self.channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        for level, stride in LEVEL_STRIDES.items():
            hits = [i for i, r in enumerate(reductions) if r == stride]
            if not hits:
                raise ValueError(
                    f"backbone {name!r} has no feature level at stride {stride} (its strides: {reductions}); "
                    "Mask2Former needs strides 4, 8, 16 and 32"
                )
            self._index[level] = hits[-1]  # the deepest stage at that stride
            self.channels[level] = channels[hits[-1]]
            self.strides[level] = stride
        if norm not in ("auto", "frozen", "batch"):
            raise ValueError(f"backbone norm must be 'auto', 'frozen' or 'batch', got {norm!r}")
        if weights is not None:
            self.load_weights(weights)
        else:
            warn_random_init(name, self.body)
        self.activation_checkpointing = False  # set by build_model (model.activation_checkpointing)
        # (forward, recompute) contexts of a checkpointed stage; the model's padding hooks replace it
        self.checkpoint_contexts: Callable[[], tuple] = lambda: (nullcontext(), nullcontext())
        self.frozen_norm = norm == "frozen" or (norm == "auto" and weights is not None)
        if self.frozen_norm:
            self.body = freeze_batch_norm_2d(self.body)

    def load_weights(self, path: str) -> None:
        """Load a local timm checkpoint through timm (which maps it onto the features_only wrapper);
        raises ValueError naming the file if it does not fit."""
        state = read_timm_weights(self.name, path)
        # timm's pretrained path with the checked state dict: its own key mapping, never a download
        loaded = timm.create_model(self.name, pretrained=True, features_only=True,
                                   pretrained_cfg_overlay=dict(state_dict=state, file=None, url=None, hf_hub_id=None))
        self.body.load_state_dict(loaded.state_dict())

    def _checkpointing(self) -> bool:
        return self.activation_checkpointing and torch.is_grad_enabled()

    def forward(self, x: Tensor, fuse: Optional[Callable[[str, Tensor], Tensor]] = None) -> dict[str, Tensor]:
        """x: (B, 3, H, W) normalised, H and W multiples of 32 -> {level: (B, C_l, H/s_l, W/s_l)}.

        `fuse(level, map) -> map`, if given, replaces each level's map as soon as its stage has run,
        so the later stages compute on the replaced map (Depth Fusion inside the backbone). With
        `activation_checkpointing` each stage keeps only its input and recomputes the rest in backward.
        """
        if fuse is None and not self._checkpointing():
            feats = self.body(x)
            return {level: feats[i] for level, i in self._index.items()}
        if not isinstance(self.body, FeatureDictNet):
            raise ValueError(f"Depth Fusion inside the backbone and activation checkpointing need a timm model whose "
                             f"features_only wrapper runs its stages in sequence; {self.name!r} is wrapped by "
                             f"{type(self.body).__name__}: set model.depth_fusion.inside_backbone=false and "
                             "model.activation_checkpointing=false")
        level_of = {name: level for name, idx in self.body.return_layers.items()
                    for level, i in self._index.items() if int(idx) == i}
        out = {}
        for name, module in self.body.items():
            # only the stages: an in-place stem ReLU would overwrite the input its recompute needs
            stage = name in self.body.return_layers and getattr(module, "inplace", False) is not True
            if stage and self._checkpointing():
                x = checkpoint(module, x, use_reentrant=False, context_fn=self.checkpoint_contexts)
            else:
                x = module(x)
            if name in level_of:
                x = out[level_of[name]] = fuse(level_of[name], x) if fuse is not None else x
        return out
