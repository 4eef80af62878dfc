"""The host-side parts of a stage-B step, batched vs one image at a time, side by side on one device:
`python -m bench.bench_host_parts [--device cuda] [--batch-size 16] [--image-size 512]`.

Teacher-shaped outputs (Q queries, K classes, mask logits at stride 4 of the canvas) are built so
that about `--instances` queries per image pass the pseudo-label rules (some of them near-duplicates),
and timed through:
- pseudo-label filtering: `make_pseudo_labels` (the batch at once) vs `per_image_pseudo_labels`;
- matching (one matcher call, as `SetCriterion` makes per decoder layer): `HungarianMatcher.forward`
  (one cost pass for the batch, one assignment solve per image) vs `cost_matrix` + solve per image;
- agreement of two pseudo-label sets: `batch_count_matches` vs `count_matches` per image.
The per-image forms are test references (tests/semi/semi_reference.py, tests/model/matcher_reference.py),
so this bench runs from a checkout.
Each figure is the median of `--repeats` calls, with the device synchronised around each call.
The batched forms save host waits on the device (one per batch instead of several per image), so
the gain is a GPU figure; on a CPU both forms run the same arithmetic.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from dgseg.pipeline.model.matcher import HungarianMatcher
from dgseg.pipeline.semi.agreement import batch_count_matches
from dgseg.pipeline.semi.pseudo_labels import make_pseudo_labels
from scipy.optimize import linear_sum_assignment

_TESTS = Path(__file__).resolve().parents[1] / "tests"
if not (_TESTS / "semi" / "semi_reference.py").is_file():
    raise ImportError(f"bench_host_parts compares with the per-image test references under {_TESTS}: "
                      "run it from a checkout")
sys.path[:0] = [str(_TESTS / "semi"), str(_TESTS / "model")]
from matcher_reference import cost_matrix  # noqa: E402
from semi_reference import count_matches, per_image_pseudo_labels  # noqa: E402


def teacher_outputs(b: int, q: int, k: int, size: int, instances: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    h = size // 4
    logits = torch.randn(b, q, k + 1, generator=g)
    logits[..., -1] += 4.0  # most queries: no object
    for i in range(b):
        hit = torch.randperm(q, generator=g)[:instances]
        logits[i, hit, torch.randint(0, k, (instances,), generator=g)] += 12.0
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
    cy, cx = torch.rand(b, q, 1, 1, generator=g) * h, torch.rand(b, q, 1, 1, generator=g) * h
    r = (0.08 + 0.15 * torch.rand(b, q, 1, 1, generator=g)) * h
    masks = 6.0 * (1 - ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt() / r)  # discs
    masks[:, 1::7] = masks[:, 0::7][:, : masks[:, 1::7].shape[1]] + 0.1  # near-duplicates
    return {"pred_logits": logits.to(device), "pred_masks": masks.to(device)}


def _time(fn, sync, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def per_image_matching(matcher: HungarianMatcher, outputs: dict, targets: list[dict]) -> list:
    res = []
    for b, t in enumerate(targets):
        if len(t["labels"]) == 0:
            res.append(None)
            continue
        cost = cost_matrix(matcher, outputs["pred_logits"][b], outputs["pred_masks"][b], t["labels"], t["masks"])
        res.append(linear_sum_assignment(cost.numpy()))
    return res


def run_bench(device: str = "cpu", batch_size: int = 8, image_size: int = 512, queries: int = 100,
              classes: int = 80, instances: int = 10, repeats: int = 10) -> dict[str, tuple[float, float]]:  # fmt: skip
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    size = (image_size, image_size)
    out_rgb = teacher_outputs(batch_size, queries, classes, image_size, instances, dev, seed=0)
    out_depth = teacher_outputs(batch_size, queries, classes, image_size, instances, dev, seed=1)
    kw = dict(score_threshold=0.7, mask_threshold=0.5, min_mask_area=5, dedup_iou=0.9)
    rgb = make_pseudo_labels(out_rgb, size, None, **kw)
    depth = make_pseudo_labels(out_depth, size, None, **kw)
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=12544)
    figures = {
        "pseudo-label filtering": (
            _time(lambda: make_pseudo_labels(out_rgb, size, None, **kw), sync, repeats),
            _time(lambda: per_image_pseudo_labels(out_rgb, size, None, **kw), sync, repeats)),
        "matching (one decoder layer)": (
            _time(lambda: matcher(out_rgb, rgb), sync, repeats),
            _time(lambda: per_image_matching(matcher, out_rgb, rgb), sync, repeats)),
        "agreement": (
            _time(lambda: batch_count_matches(rgb, depth, iou_threshold=0.5), sync, repeats),
            _time(lambda: [count_matches(r, d, iou_threshold=0.5) for r, d in zip(rgb, depth, strict=True)],
                  sync, repeats)),
    }  # fmt: skip
    per_image = sum(len(p["labels"]) for p in rgb) / batch_size
    print(f"\nhost-side parts of a stage-B step on {dev}: {batch_size} images of {image_size}px, {queries} queries, "
          f"{classes} classes, {per_image:.1f} pseudo-labels per image; median of {repeats}")
    print(f"{'part':<32}{'batched ms':>12}{'per image ms':>14}{'ratio':>8}")
    for name, (a, b) in figures.items():
        print(f"{name:<32}{1e3 * a:>12.2f}{1e3 * b:>14.2f}{b / a:>8.2f}")
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--instances", type=int, default=10)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    run_bench(a.device, a.batch_size, a.image_size, a.queries, a.classes, a.instances, a.repeats)


if __name__ == "__main__":
    main()
