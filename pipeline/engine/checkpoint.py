"""Checkpoints: one file holds models, optimiser, scheduler, scaler, RNG and config.

Written atomically (temporary file, then rename), so a run killed while saving keeps its
previous checkpoint; read back with `weights_only=True` because checkpoints are files that
travel between people and machines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

LAST = "last_checkpoint"


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


def save_checkpoint(out_dir: str | Path, iteration: int, state: dict[str, Any]) -> Path:
    """Write `model_{iteration:07d}.pth` and point `last_checkpoint` at it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"model_{iteration:07d}.pth"
    tmp = path.with_suffix(".pth.tmp")
    torch.save({"iteration": iteration, "rng": rng_state(), **state}, tmp)
    os.replace(tmp, path)
    tmp_last = out / (LAST + ".tmp")
    tmp_last.write_text(path.name)
    os.replace(tmp_last, out / LAST)
    return path


def last_checkpoint(out_dir: str | Path) -> Path | None:
    marker = Path(out_dir) / LAST
    if not marker.is_file():
        return None
    path = Path(out_dir) / marker.read_text().strip()
    return path if path.is_file() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's last checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = last_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: run folder without a checkpoint ('{LAST}' missing)")
        return found
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err


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
