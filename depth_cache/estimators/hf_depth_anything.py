"""Depth Anything V2 weights from a Hugging Face model folder (`Depth-Anything-V2-{Small,Base,Large}-hf`:
`config.json` + `model.safetensors`), mapped onto the official layout that `DepthAnythingV2` uses.

The mapping is the inverse of transformers' `convert_depth_anything_to_hf.py`: DINOv2's separate
query/key/value projections are concatenated back into `qkv`, the fusion stages run deepest first
(`fusion_stage.layers.0` = `refinenet4`), and the head's three convolutions are the official
`output_conv1` / `output_conv2.{0,2}`. Both the on-disk names of the published folders
(transformers 4: `attention.attention.query`, `attention.output.dense`) and transformers 5's
(`attention.q_proj`, `attention.o_proj`) are read. Every tensor of the folder must be used (an
unexpected key is an error), and the result is then checked against the chosen size like a `.pth`.
Nothing here imports transformers: the folder is read with `safetensors` alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch

CONFIG, WEIGHTS = "config.json", "model.safetensors"

# (HF name pattern, official name template); {i} is the block / layer index
_DIRECT: list[tuple[str, str]] = [
    (r"backbone\.embeddings\.cls_token", "pretrained.cls_token"),
    (r"backbone\.embeddings\.mask_token", "pretrained.mask_token"),
    (r"backbone\.embeddings\.position_embeddings", "pretrained.pos_embed"),
    (r"backbone\.embeddings\.patch_embeddings\.projection\.(weight|bias)", "pretrained.patch_embed.proj.{0}"),
    (r"backbone\.layernorm\.(weight|bias)", "pretrained.norm.{0}"),
    (r"backbone\.encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", "pretrained.blocks.{0}.norm{1}.{2}"),
    (r"backbone\.encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", "pretrained.blocks.{0}.ls{1}.gamma"),
    (r"backbone\.encoder\.layer\.(\d+)\.(?:attention\.output\.dense|attention\.o_proj)\.(weight|bias)",
     "pretrained.blocks.{0}.attn.proj.{1}"),
    (r"backbone\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", "pretrained.blocks.{0}.mlp.{1}.{2}"),
    (r"backbone\.encoder\.layer\.(\d+)\.mlp\.(?:weights_in)\.(weight|bias)", "pretrained.blocks.{0}.mlp.w12.{1}"),
    (r"backbone\.encoder\.layer\.(\d+)\.mlp\.(?:weights_out|down_proj)\.(weight|bias)",
     "pretrained.blocks.{0}.mlp.w3.{1}"),
    (r"neck\.reassemble_stage\.layers\.(\d+)\.projection\.(weight|bias)", "depth_head.projects.{0}.{1}"),
    (r"neck\.reassemble_stage\.layers\.(\d+)\.resize\.(weight|bias)", "depth_head.resize_layers.{0}.{1}"),
    (r"neck\.convs\.(\d+)\.weight", "depth_head.scratch.layer{0+1}_rn.weight"),
    (r"neck\.fusion_stage\.layers\.(\d+)\.projection\.(weight|bias)", "depth_head.scratch.refinenet{4-0}.out_conv.{1}"),
    (r"neck\.fusion_stage\.layers\.(\d+)\.residual_layer([12])\.convolution([12])\.(weight|bias)",
     "depth_head.scratch.refinenet{4-0}.resConfUnit{1}.conv{2}.{3}"),
    (r"head\.conv1\.(weight|bias)", "depth_head.scratch.output_conv1.{0}"),
    (r"head\.conv2\.(weight|bias)", "depth_head.scratch.output_conv2.0.{0}"),
    (r"head\.conv3\.(weight|bias)", "depth_head.scratch.output_conv2.2.{0}"),
]  # fmt: skip
_COMPILED = [(re.compile(p), t) for p, t in _DIRECT]
# tensors concatenated into one official tensor: (HF pattern with the part as group 2, official template, parts)
_QKV = re.compile(r"backbone\.encoder\.layer\.(\d+)\.attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)"
                  r"\.(weight|bias)")
_QKV_PART = {"query": 0, "key": 1, "value": 2, "q_proj": 0, "k_proj": 1, "v_proj": 2}
_SWIGLU = re.compile(r"backbone\.encoder\.layer\.(\d+)\.mlp\.(gate_proj|up_proj)\.(weight|bias)")
_SWIGLU_PART = {"gate_proj": 0, "up_proj": 1}  # w12 = [gate; up]: `a, b = w12(x).chunk(2)`, silu(a) * b


class HFWeightsError(ValueError):
    """A Hugging Face folder that is not a relative Depth Anything (V2) model this project can map."""


def is_hf_folder(path: str | Path) -> bool:
    return Path(path).is_dir()


def _fill(template: str, groups: Sequence[str]) -> str:
    def sub(m: re.Match) -> str:
        expr = m.group(1)
        if "+" in expr:
            a, b = expr.split("+")
            return str(int(groups[int(a)]) + int(b))
        if "-" in expr:
            a, b = expr.split("-")
            return str(int(a) - int(groups[int(b)]))
        return groups[int(expr)]

    return re.sub(r"\{([^}]+)\}", sub, template)


def map_hf_state_dict(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """HF Depth Anything tensors -> the official layout; a key that maps to nothing is an error."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, torch.Tensor]] = {}
    unexpected = []
    for key, value in state.items():
        m = _QKV.fullmatch(key) or _SWIGLU.fullmatch(key)
        if m is not None:
            block, part, kind = m.groups()
            name = "attn.qkv" if m.re is _QKV else "mlp.w12"
            index = (_QKV_PART if m.re is _QKV else _SWIGLU_PART)[part]
            parts.setdefault(f"pretrained.blocks.{block}.{name}.{kind}", {})[index] = value
            continue
        for pattern, template in _COMPILED:
            m = pattern.fullmatch(key)
            if m is not None:
                out[_fill(template, m.groups())] = value
                break
        else:
            unexpected.append(key)
    for name, pieces in parts.items():
        count = 3 if ".attn.qkv." in name else 2
        if sorted(pieces) != list(range(count)):
            raise HFWeightsError(f"{source}: {name} needs {count} parts, the folder has {len(pieces)}")
        out[name] = torch.cat([pieces[i] for i in range(count)], dim=0)
    if unexpected:
        shown = ", ".join(unexpected[:10]) + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else "")
        raise HFWeightsError(f"{source}: {len(unexpected)} tensors that are no part of Depth Anything V2: {shown}")
    return out


def read_hf_config(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise HFWeightsError(f"{folder}: not a Hugging Face model folder ({CONFIG} missing; a weights option "
                             "takes an official .pth file or a folder with config.json and model.safetensors)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise HFWeightsError(f"{path}: cannot read it ({err})") from err
    if cfg.get("model_type") != "depth_anything":
        raise HFWeightsError(f"{path}: model_type is {cfg.get('model_type')!r}, not 'depth_anything'")
    if cfg.get("depth_estimation_type", "relative") != "relative":
        raise HFWeightsError(f"{path}: a {cfg['depth_estimation_type']!r} depth model; the depth cache uses the "
                             "relative models (Depth-Anything-V2-{Small,Base,Large}-hf)")
    return cfg


def check_hf_config(cfg: dict, layer_idx: Sequence[int], size: str, folder: Path) -> None:
    """The folder's backbone taps the blocks that the official `size` model taps (HF counts the
    embeddings as stage 0, so its out_indices are the official layer_idx + 1)."""
    backbone = cfg.get("backbone_config") or {}
    taps = backbone.get("out_indices")
    if taps is not None and [int(i) - 1 for i in taps] != list(layer_idx):
        raise HFWeightsError(f"{folder / CONFIG}: backbone out_indices {taps} do not match Depth Anything V2 "
                             f"{size!r} (expected {[i + 1 for i in layer_idx]})")
    if int(cfg.get("patch_size", 14)) != 14:
        raise HFWeightsError(f"{folder / CONFIG}: patch_size {cfg['patch_size']} (Depth Anything V2 uses 14)")


def read_hf_folder(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict in the official layout, the folder's config.json)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_hf_config(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        sharded = " (sharded folders are not read; merge the shards into one model.safetensors)" \
            if (folder / f"{WEIGHTS}.index.json").is_file() else ""
        raise HFWeightsError(f"{folder}: {WEIGHTS} missing{sharded}")
    try:
        state = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise HFWeightsError(f"{weights}: not a readable safetensors file ({type(err).__name__}: {err})") from err
    return map_hf_state_dict(state, str(weights)), cfg
