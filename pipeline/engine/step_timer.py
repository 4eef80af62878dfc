"""Where a training step's time goes: cumulative seconds per named part (`train.time_parts`).

`timer("teacher")` is a context manager. Off (the default), it is one shared no-op context, so the
hot path pays a method call per part. On, it adds the part's wall time to `totals[name]`, and on
CUDA it synchronises the device at both edges: without that, a part would be charged for kernels
queued by earlier parts (the host runs ahead of the GPU), and the breakdown would say nothing.
The synchronisation itself slows a GPU step, so it is for benchmarks (`bench step --semi`), not
for training runs. Parts may nest (`matching` runs inside the loss parts); nested time is counted
in both.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

_OFF = nullcontext()
PREFIX = "time/"  # metrics.jsonl keys: time/<part> = seconds summed since the run started


class StepTimer:
    """Cumulative seconds per part; a no-op unless `enabled`."""

    def __init__(self, enabled: bool = False, device: torch.device | str = "cpu") -> None:
        self.enabled = bool(enabled)
        dev = torch.device(device)
        self._sync = (lambda: torch.cuda.synchronize(dev)) if self.enabled and dev.type == "cuda" else None
        self.totals: dict[str, float] = defaultdict(float)

    def __call__(self, name: str):
        return _Part(self, name) if self.enabled else _OFF

    def log(self) -> dict[str, float]:
        """`time/<part>` entries for a metrics row (empty when off)."""
        return {PREFIX + k: v for k, v in self.totals.items()}

    def wrap(self, module: nn.Module, name: str) -> nn.Module:
        """`module` with its calls timed as `name` (the module itself when off)."""
        return _Timed(module, self, name) if self.enabled else module


class _Part:
    __slots__ = ("timer", "name", "t0")

    def __init__(self, timer: StepTimer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        if self.timer._sync is not None:
            self.timer._sync()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        if self.timer._sync is not None:
            self.timer._sync()
        self.timer.totals[self.name] += time.perf_counter() - self.t0


class _Timed(nn.Module):
    """A module whose forward is timed as one part (e.g. the criterion's matcher)."""

    def __init__(self, inner: nn.Module, timer: StepTimer, name: str) -> None:
        super().__init__()
        self.inner, self.timer, self.name = inner, timer, name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.timer(self.name):
            return self.inner(*args, **kwargs)
