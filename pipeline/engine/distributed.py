"""Process-group setup for `torchrun` (gloo on the CPU, NCCL on GPUs); one process works too."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group `torchrun` describes in the environment; a no-op without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, info: DistInfo | None = None) -> torch.device:
    """`auto` = this process's GPU when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            local = info.local_rank if info else int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")
    return torch.device(name)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over processes (for logging only)."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def all_reduce_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum scalar values over processes (every process must call it, with the same keys)."""
    if not dist.is_initialized() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every process rank `src`'s buffers (e.g. live BatchNorm statistics, which DDP only
    broadcasts at the start of each forward), so copies taken from them (the EMA teacher) agree."""
    if not dist.is_initialized():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src)


def all_gather_objects(obj: object) -> list[object]:
    """Gather picklable objects (e.g. per-process predictions) on every process."""
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
