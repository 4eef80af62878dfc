"""The stage-B teacher's two views, one batched forward vs two forwards, side by side:
`python -m dgseg.bench.bench_teacher_views [--config demo] [--batch-size 8] [--device cpu]`.

The teacher (the config's model, random weights, eval mode, Depth Fusion fed random maps of the
config's cache levels) labels an unlabelled batch seen as the RGB view and as the depth view:
- batched: `pipeline.semi.trainer.teacher_pseudo_labels`, what training runs (2B images, one forward,
  one pass of the pseudo-label filter);
- two forwards: the RGB view, then the depth view, each forward and filter on its own B images (the
  form it replaced).
Calls alternate between the forms; each figure is the median of `--repeats`, the device synchronised
around each call. Both give the same pseudo-labels (tests/semi/test_semi_teacher_views.py).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from types import SimpleNamespace

import torch
from dgseg.depth_cache.estimators.files import parse_levels
from dgseg.pipeline.config.loading import load_config
from dgseg.pipeline.model.build import build_model
from dgseg.pipeline.semi.depth_view import render_depth_view
from dgseg.pipeline.semi.pseudo_labels import PseudoLabeler
from dgseg.pipeline.semi.trainer import teacher_pseudo_labels


def run_bench(config: str = "demo", batch_size: int = 8, device: str = "cpu", repeats: int = 10,
              image_size: int | None = None) -> dict[str, float]:  # fmt: skip
    cfg = load_config(config, ["semi.score_threshold=0.0"])  # a random teacher: keep its queries busy
    dev = torch.device(device)
    size = image_size or cfg.data.image_size
    levels = sorted(set(cfg.model.depth_fusion.sources.values())) if cfg.model.depth_fusion.enabled else []
    info = {f.name: f for f in parse_levels(levels)}  # the `files` source's levels (the demo configs')
    channels = {lv: f.channels for lv, f in info.items()}
    torch.manual_seed(0)
    teacher = build_model(cfg.model, cfg.data.num_classes, channels).to(dev).eval()
    g = torch.Generator().manual_seed(1)
    batch = SimpleNamespace(
        images=torch.rand(batch_size, 3, size, size, generator=g).to(dev),
        valid=torch.ones(batch_size, size, size, dtype=torch.bool, device=dev),
        depth=torch.rand(batch_size, 1, size, size, generator=g).to(dev),
        features={lv: torch.randn(batch_size, 1, int(size / info[lv].stride), int(size / info[lv].stride), generator=g).to(dev)
                  for lv in levels})  # fmt: skip
    ctx = SimpleNamespace(cfg=cfg, autocast=contextlib.nullcontext(), use_depth=bool(levels))
    label = PseudoLabeler.from_config(cfg.semi)
    feats = batch.features if levels else None

    @torch.no_grad()
    def two_forwards():
        rgb = label(teacher(batch.images, feats, ~batch.valid), (size, size), batch.valid)
        view = render_depth_view(batch.depth, batch.valid)
        return rgb, label(teacher(view, feats, ~batch.valid), (size, size), batch.valid)

    forms = {"batched (training)": lambda: teacher_pseudo_labels(ctx, teacher, batch), "two forwards": two_forwards}
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in forms}
    for fn in forms.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in forms.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nstage-B teacher, RGB + depth views of {batch_size} images of {size}px, config {config}, {dev}, "
          f"median of {repeats}:")
    for name, t in med.items():
        print(f"{name:<22}{1e3 * t:>10.1f} ms{t / med['two forwards']:>8.2f}x")
    return med


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="demo")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    run_bench(a.config, a.batch_size, a.device, a.repeats, a.image_size)


if __name__ == "__main__":
    main()
