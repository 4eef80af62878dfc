"""Where a training step's time goes: cumulative seconds per named part (`train.time_parts`).

`timer("teacher")` is a context manager. Off (the default), it is one shared no-op context, so the
hot path pays a method call per part. On, it adds the part's wall time to `totals[name]`, and on
CUDA it synchronises the device at both edges: without that, a part would be charged for kernels
queued by earlier parts (the host runs ahead of the GPU), and the breakdown would say nothing.
The synchronisation itself slows a GPU step, so it is for benchmarks (`bench step --semi`), not
for training runs. Parts may nest (`matching` runs inside the loss parts); nested time is counted
in both.

On CUDA it also records each part's peak memory (`torch.cuda.max_memory_allocated` while the part
runs, the most over all steps: `mem/<part>`) and the rise of that peak over the allocation at the
part's start (`mem_rise/<part>`, what the part itself adds). Nesting is handled: before a part
resets the peak counter, the peak so far is credited to every open part.
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
MEM_PREFIX, RISE_PREFIX = "mem/", "mem_rise/"  # bytes, the most over the steps so far (CUDA only)


class StepTimer:
    """Cumulative seconds per part; a no-op unless `enabled`."""

    def __init__(self, enabled: bool = False, device: torch.device | str = "cpu") -> None:
        self.enabled = bool(enabled)
        dev = torch.device(device)
        self._sync = (lambda: torch.cuda.synchronize(dev)) if self.enabled and dev.type == "cuda" else None
        self.device = dev
        self.memory = self._sync is not None
        self.totals: dict[str, float] = defaultdict(float)
        self.peaks: dict[str, int] = defaultdict(int)
        self.rises: dict[str, int] = defaultdict(int)
        self._open: list[_Part] = []

    def __call__(self, name: str):
        return _Part(self, name) if self.enabled else _OFF

    def log(self) -> dict[str, float]:
        """`time/<part>` (and on CUDA `mem/<part>`, `mem_rise/<part>`) entries for a metrics row (empty when off)."""
        out: dict[str, float] = {PREFIX + k: v for k, v in self.totals.items()}
        out.update({MEM_PREFIX + k: float(v) for k, v in self.peaks.items()})
        out.update({RISE_PREFIX + k: float(v) for k, v in self.rises.items()})
        return out

    def _credit_peak(self) -> None:
        """Fold the peak since the last reset into every open part, then reset the counter."""
        peak = torch.cuda.max_memory_allocated(self.device)
        for part in self._open:
            part.peak = max(part.peak, peak)
        torch.cuda.reset_peak_memory_stats(self.device)

    def wrap(self, module: nn.Module, name: str) -> nn.Module:
        """`module` with its calls timed as `name` (the module itself when off)."""
        return _Timed(module, self, name) if self.enabled else module


class _Part:
    __slots__ = ("timer", "name", "t0", "start", "peak")

    def __init__(self, timer: StepTimer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        t = self.timer
        if t._sync is not None:
            t._sync()
        if t.memory:
            t._credit_peak()
            self.start = self.peak = torch.cuda.memory_allocated(t.device)
            t._open.append(self)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        t = self.timer
        if t._sync is not None:
            t._sync()
        t.totals[self.name] += time.perf_counter() - self.t0
        if t.memory:
            t._credit_peak()
            t._open.remove(self)
            t.peaks[self.name] = max(t.peaks[self.name], self.peak)
            t.rises[self.name] = max(t.rises[self.name], self.peak - self.start)


class _Timed(nn.Module):
    """A module whose forward is timed as one part (e.g. the criterion's matcher)."""

    def __init__(self, inner: nn.Module, timer: StepTimer, name: str) -> None:
        super().__init__()
        self.inner, self.timer, self.name = inner, timer, name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.timer(self.name):
            return self.inner(*args, **kwargs)
