"""Checkpoints: one file holds models, optimiser, scheduler, scaler, RNG and config.

Written atomically (temporary file, then rename), so a run killed while saving keeps its
previous checkpoint; read back with `weights_only=True` because checkpoints are files that
travel between people and machines. Only the newest `train.keep_checkpoints` full checkpoints
stay; at the end of a run `model_final.pth` and `model_final.safetensors` hold the weights alone
(teacher and student when present) with the config, which `evaluate` and `predict` read from a
run folder (detectron2's `model_final.pth`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from dgseg.weights_io import load_error_reason

LAST = "last_checkpoint"
FINAL = "model_final"  # weights-only files of a finished run: model_final.pth and model_final.safetensors
_PERIODIC = re.compile(r"model_(\d{7})\.pth")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: str | Path, iteration: int, state: dict[str, Any], keep: int = 0) -> Path:
    """Write `model_{iteration:07d}.pth`, point `last_checkpoint` at it, then keep only the newest
    `keep` periodic checkpoints (0 = all)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"model_{iteration:07d}.pth"
    tmp = path.with_suffix(".pth.tmp")
    torch.save({"iteration": iteration, "rng": rng_state(), **state}, tmp)
    os.replace(tmp, path)
    tmp_last = out / (LAST + ".tmp")
    tmp_last.write_text(path.name)
    os.replace(tmp_last, out / LAST)
    prune_checkpoints(out, keep)
    return path


def prune_checkpoints(out_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` periodic checkpoints (0 = keep all), never the one
    `last_checkpoint` names; returns the deleted files."""
    if keep <= 0:
        return []
    out = Path(out_dir)
    found = sorted((int(m.group(1)), p) for p in out.glob("model_*.pth") if (m := _PERIODIC.fullmatch(p.name)))
    last = last_checkpoint(out)
    doomed = [p for _, p in found[:-keep] if last is None or p.name != last.name]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def _weights_only(models: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    # own storage per tensor: safetensors refuses tensors that share memory
    return {f"{name}.{k}": v.detach().cpu().contiguous().clone() for name, sd in models.items() for k, v in sd.items()}


def save_final_weights(out_dir: str | Path, models: dict[str, dict[str, torch.Tensor]], config: dict[str, Any],
                       iteration: int) -> tuple[Path, Path]:
    """`model_final.pth` and `model_final.safetensors`: the weights of `models` ("model", and "teacher"
    in a teacher-student run), the config and the iteration; no optimiser state."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    pth, st = out / f"{FINAL}.pth", out / f"{FINAL}.safetensors"
    tmp = pth.with_suffix(".pth.tmp")
    torch.save({**{k: dict(v) for k, v in models.items()}, "config": config, "iteration": iteration}, tmp)
    os.replace(tmp, pth)
    tmp = st.with_suffix(".safetensors.tmp")
    # metadata is text only: the config as JSON, and what the key prefixes are
    save_file(_weights_only(models), str(tmp), metadata={
        "format": "dgseg-final", "models": ",".join(models), "iteration": str(iteration),
        "config": json.dumps(config)})
    os.replace(tmp, st)
    return pth, st


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err
    if meta.get("format") != "dgseg-final":
        raise CheckpointError(f"{path}: a safetensors file without dgseg's metadata (format=dgseg-final); "
                              "only model_final.safetensors written by `train` can be read here")
    out: dict[str, Any] = {name: {} for name in meta.get("models", "").split(",") if name}
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        if name not in out:
            raise CheckpointError(f"{path}: tensor {key!r} belongs to no model listed in its metadata ({list(out)})")
        out[name][rest] = value
    out["config"] = json.loads(meta.get("config", "{}"))
    out["iteration"] = int(meta["iteration"]) if "iteration" in meta else None
    return out


def last_checkpoint(out_dir: str | Path) -> Path | None:
    marker = Path(out_dir) / LAST
    if not marker.is_file():
        return None
    path = Path(out_dir) / marker.read_text().strip()
    return path if path.is_file() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's final weights (`model_final.pth`), else its last
    checkpoint (a run still going, or stopped early)."""
    path = Path(path)
    if path.is_dir():
        if (path / f"{FINAL}.pth").is_file():
            return path / f"{FINAL}.pth"
        found = last_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: run folder without weights ('{FINAL}.pth' and '{LAST}' missing)")
        return found
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise CheckpointError(f"{path}: not a readable checkpoint ({load_error_reason(err)})") from err



def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a short message naming what differs (another architecture, another size)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{len(items)} {name}: {', '.join(items[:8])}{more}")
        raise CheckpointError(f"{source}: checkpoint does not fit this model's architecture; " + "; ".join(parts))
    model.load_state_dict(state)
