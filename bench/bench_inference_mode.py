"""Evaluation's prediction pass with and without a recorded autograd graph, side by side:
`python -m dgseg.bench.bench_inference_mode [--device cpu] [--batch-size 8] [--image-size 256] [--batches 6]
[--rounds 2]`.

`predict_loader` runs under `torch.inference_mode()`. Before that fix its decorator sat on another
function, so every evaluation recorded a graph, the way `grad` below does. The bench runs the same body
(`predict_loader.__wrapped__`) three ways: with grad enabled (the old behaviour), under `torch.no_grad()`,
and under `torch.inference_mode()` (the current one). Each way runs in its own process on the demo's
model (resnet18 from random init, RGB only) over random images; the three ways take turns for
`--rounds` rounds (a shared machine's load then hits them alike), and the bench prints, per way, the
lowest of its rounds' median seconds per batch and the highest of its peak memories:
on CUDA, the peak allocated bytes; on a CPU, the process's peak resident set during the loop (Linux
`VmHWM`, reset before the loop through `/proc/self/clear_refs`).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

MODES = ("grad", "no_grad", "inference_mode")


@dataclass
class _Batch:
    images: torch.Tensor
    valid: torch.Tensor
    orig_sizes: list
    image_ids: list
    features: dict | None = None

    def to(self, device: torch.device) -> _Batch:
        return _Batch(self.images.to(device), self.valid.to(device), self.orig_sizes, self.image_ids)


def _rss_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (the CPU peak needs Linux)")


def _run_mode(mode: str, device: str, batch_size: int, image_size: int, batches: int, queue) -> None:
    from dgseg.pipeline.config import EvalConfig, ModelConfig
    from dgseg.pipeline.engine.depth_source import DepthProvider
    from dgseg.pipeline.engine.inference import predict_loader
    from dgseg.pipeline.model.build import build_model

    torch.manual_seed(0)
    dev = torch.device(device)
    cfg = ModelConfig()  # the demo's model sizes
    cfg.depth_fusion.enabled = False
    model = build_model(cfg, 3, {}).to(dev)
    g = torch.Generator().manual_seed(1)
    loader = [_Batch(torch.rand(batch_size, 3, image_size, image_size, generator=g),
                     torch.ones(batch_size, image_size, image_size, dtype=torch.bool),
                     [(image_size, image_size)] * batch_size, list(range(i * batch_size, (i + 1) * batch_size)))
              for i in range(batches)]  # fmt: skip
    provider, eval_cfg = DepthProvider("none", {}), EvalConfig(max_detections=100)
    body = predict_loader.__wrapped__  # the function without its inference_mode decorator
    context = {"grad": nullcontext, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    with context():
        body(model, loader[:1], dev, provider, eval_cfg, False, show_progress=False)  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    times = []
    for batch in loader:
        sync()
        t = time.perf_counter()
        with context():
            body(model, [batch], dev, provider, eval_cfg, False, show_progress=False)
        sync()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _rss_peak_kib() / 1024
    queue.put((mode, statistics.median(times), peak))


def run_bench(device: str = "cpu", batch_size: int = 8, image_size: int = 256, batches: int = 6,
              rounds: int = 2) -> dict:
    """{mode: (median s per batch, peak MiB)}, each mode measured in a fresh process per round."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    found: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for mode in MODES:
            p = ctx.Process(target=_run_mode, args=(mode, device, batch_size, image_size, batches, queue))
            p.start()
            m, seconds, peak = queue.get()
            p.join()
            if p.exitcode:
                raise RuntimeError(f"bench_inference_mode: the {mode} run exited with {p.exitcode}")
            old = found.get(m, (float("inf"), 0.0))
            found[m] = (min(old[0], seconds), max(old[1], peak))
    what = "peak allocated MiB" if device.startswith("cuda") else "peak RSS MiB"
    print(f"\nprediction pass on {device}: {batches} batches of {batch_size} x {image_size}px, the demo model "
          f"(resnet18, RGB); median s per batch (best of {rounds} rounds) and {what} during the loop")
    base_t, base_m = found["grad"]
    print(f"{'mode':<16}{'s/batch':>10}{'x grad':>8}{what:>22}{'x grad':>8}")
    for mode, (seconds, peak) in found.items():
        print(f"{mode:<16}{seconds:>10.3f}{seconds / base_t:>8.2f}{peak:>22.1f}{peak / base_m:>8.2f}")
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    run_bench(a.device, a.batch_size, a.image_size, a.batches, a.rounds)


if __name__ == "__main__":
    main()
