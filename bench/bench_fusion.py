"""Cost of Depth Fusion in a training step: `python -m bench.bench_fusion` (or the CLI's bench group).

Two models that differ only by Depth Fusion (same seed, same config otherwise) take alternating
training steps (forward + criterion + backward + AdamW step) on the same batch; the fused one also
reads precomputed depth features, as the cache delivers them after collation ((B, C, H/s, W/s)
tensors already on the device). Prints the median step time of each and their ratio (target
<= 1.05). Reading the cache itself happens in the DataLoader workers and is measured by
`bench_cache`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional

import torch
from dgseg.pipeline.config import ModelConfig
from dgseg.pipeline.model.build import build_criterion, build_model


def _targets(batch: int, size: int, num_classes: int, device: torch.device, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 5, (1,), generator=g))
        masks = torch.zeros(n, size, size, dtype=torch.bool)
        for i in range(n):
            y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            h, w = torch.randint(size // 8, size // 2, (2,), generator=g).tolist()
            masks[i, y0:y0 + h, x0:x0 + w] = True
        labels = torch.randint(0, num_classes, (n,), generator=g)
        targets.append({"labels": labels.to(device), "masks": masks.to(device)})
    return targets


def run_bench(backbone: str = "resnet18", image_size: int = 128, batch_size: int = 8, steps: int = 10,
              warmup: int = 3, device: str = "cpu", feature_channels: int = 64, feature_stride: int = 8,
              sources: Optional[dict[str, str]] = None, num_classes: int = 3, amp: bool = False) -> dict:
    """Median step times (s) without and with Depth Fusion, and their ratio; also printed."""
    dev = torch.device(device)
    cfg_off = ModelConfig(backbone=backbone)
    cfg_off.depth_fusion.enabled = False
    cfg_on = ModelConfig(backbone=backbone)
    if sources is not None:
        cfg_on.depth_fusion.sources = dict(sources)
    names = sorted(set(cfg_on.depth_fusion.sources.values()))
    images = torch.rand(batch_size, 3, image_size, image_size, device=dev)
    side = image_size // feature_stride
    depth = {n: torch.randn(batch_size, feature_channels, side, side, device=dev) for n in names}
    targets = _targets(batch_size, image_size, num_classes, dev)

    runs = {}
    for label, cfg, feats in (("without depth", cfg_off, None), ("Depth Fusion", cfg_on, depth)):
        torch.manual_seed(0)
        model = build_model(cfg, num_classes, {n: feature_channels for n in names} if feats else {}).to(dev)
        criterion = build_criterion(cfg, num_classes).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        runs[label] = (model, criterion, opt, feats)

    def step(model, criterion, opt, feats) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
            out = model(images, feats)
        loss = sum(criterion(out, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {label: [] for label in runs}
    for i in range(warmup + steps):
        # alternate (and swap the order every round) so drifting machine load hits both alike
        order = list(runs) if i % 2 == 0 else list(runs)[::-1]
        for label in order:
            t = step(*runs[label])
            if i >= warmup:
                times[label].append(t)
    med = {label: statistics.median(v) for label, v in times.items()}
    ratio = med["Depth Fusion"] / med["without depth"]
    fused = cfg_on.depth_fusion.sources
    print(f"training step, {backbone}, batch {batch_size} at {image_size}px on {device}, "
          f"{steps} steps each (median), fusion {fused} from {feature_channels}ch features at stride {feature_stride}")
    for label, v in med.items():
        print(f"  {label:<14} {v * 1000:9.1f} ms")
    print(f"  ratio (fusion / without) {ratio:.3f}   (target <= 1.05)")
    return {"without_depth_s": med["without depth"], "fusion_s": med["Depth Fusion"], "ratio": ratio}


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--feature-channels", type=int, default=64)
    p.add_argument("--feature-stride", type=int, default=8)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (cuda only)")
    a = p.parse_args(argv)
    run_bench(backbone=a.backbone, image_size=a.image_size, batch_size=a.batch_size, steps=a.steps, warmup=a.warmup,
              device=a.device, feature_channels=a.feature_channels, feature_stride=a.feature_stride, amp=a.amp)


if __name__ == "__main__":
    main()
