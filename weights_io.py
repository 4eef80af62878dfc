"""Reading weight files that come from elsewhere (untrusted): tensors only, never arbitrary pickles.

The one place that turns a refused `torch.load(..., weights_only=True)` into a message. torch's own
message (and timm's) advises retrying with `weights_only=False`, which would run whatever code the
file carries; the message here names the file and what it holds, and the safe ways out instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

SAFE_WAYS = ("re-save it as a plain state dict (torch.save(model.state_dict(), ...)) or as .safetensors "
             "in an environment you trust")  # fmt: skip


def load_error_reason(err: BaseException) -> str:
    """Why a weights file could not be read, without advice to load it unsafely."""
    text = str(err)
    if "weights_only" in text or "Weights only load failed" in text or "pickle globals" in text:
        listed = [g for found in re.findall(r"Unsupported globals: (.*?)\.(?: |$)", text) for g in found.split(", ")]
        found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", text)) | set(listed))
        what = f"Python objects ({', '.join(found)})" if found else "Python objects, not only tensors"
        return f"it holds {what}, which a safe load (weights_only=True) refuses; {SAFE_WAYS}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def torch_load(path: str | Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a ValueError naming `what` and the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(f"cannot read {what} {path}: {load_error_reason(err)}") from err
