"""How far cached maps, flipped or resized afterwards, are from the maps of the flipped/resized image.

Stage two applies every geometric augmentation to the cached depth and features instead of
re-running the estimator. That is exact for the `files` source (flip) but only approximate for a
network, which is neither flip- nor scale-equivariant. This measures the gap per map as
`||T(F(x)) - F(T(x))|| / ||F(x)||` on generated scenes, for T = horizontal flip and T = resize by
0.75, for the tiny estimator and for Depth Anything V2 with given weights (e.g. the official
checkpoint; `--fixture-weights` regenerates the shared fixture's random vits weights).

`python -m bench.bench_flip_gap [--weights depth_anything_v2_vits.pth]`
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F


def _maps(estimator, images: torch.Tensor) -> dict[str, torch.Tensor]:
    from dgseg.depth_cache.online import OnlineDepth

    entries = OnlineDepth(estimator, depth_stride=1, precision="fp32")(images)
    return {"depth": torch.stack([e.depth for e in entries]),
            **{k: torch.stack([e.features[k] for e in entries]) for k in entries[0].features}}


def gaps(estimator, images: torch.Tensor, scale: float = 0.75) -> dict[str, dict[str, float]]:
    """{map name: {"flip": rel. gap, "resize": rel. gap}} over a batch of (B, 3, H, W) images in [0, 1]."""
    base = _maps(estimator, images)
    flipped = _maps(estimator, images.flip(-1))
    h, w = images.shape[-2:]
    small = F.interpolate(images, size=(round(h * scale), round(w * scale)), mode="bilinear",
                          align_corners=False, antialias=True)
    resized = _maps(estimator, small)
    out = {}
    for name, m in base.items():
        flip_gap = (m.flip(-1) - flipped[name]).norm() / m.norm()
        # compare at the smaller map's grid: both cover the same scene extent
        down = F.interpolate(m, size=resized[name].shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        resize_gap = (down - resized[name]).norm() / down.norm()
        out[name] = {"flip": float(flip_gap), "resize": float(resize_gap)}
    return out


def fixture_vits(input_size: int = 518):
    """vits with the shared fixture's deterministic random weights (no real checkpoint needed)."""
    import json
    import re
    import zlib

    from dgseg.depth_cache.estimators.depth_anything_v2 import build_depth_anything_v2

    manifest = Path(__file__).resolve().parents[2] / "shared/fixtures/depth_anything_v2_vits/state_dict_manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found (the fixture lives in ../shared)")
    one_plus = (re.compile(r"(^|\.)norm\d?\.weight$"), re.compile(r"\.ls[12]\.gamma$"))
    sd = {}
    for key, shape, _ in json.loads(manifest.read_text()):
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        v = torch.randn(shape, generator=g) * 0.02
        sd[key] = 1.0 + v if any(p.search(key) for p in one_plus) else v
    model = build_depth_anything_v2("vits", input_size=input_size)
    model.load_state_dict(sd, strict=True)
    return model


def main(argv: list[str] | None = None) -> None:
    from dgseg.depth_cache.estimators.depth_anything_v2 import build_depth_anything_v2, build_tiny
    from dgseg.pipeline.data.dataset import read_image
    from dgseg.pipeline.data.synthetic import generate_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--weights", help="official Depth Anything V2 checkpoint (vits unless --size)")
    p.add_argument("--size", default="vits")
    p.add_argument("--input-size", type=int, default=518, help="DAv2 input short side (518 = official)")
    p.add_argument("--fixture-weights", action="store_true", help="vits with the shared fixture's random weights")
    a = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="flipgap_"))
    generate_dataset(root, num_train=a.images, num_val=1, size=128, seed=5)
    images = torch.stack([read_image(f) for f in sorted((root / "images/train").glob("*.png"))])
    estimators = {"tiny (random init)": build_tiny(seed=0, input_size=126)}
    if a.fixture_weights:
        estimators["vits (fixture random weights)"] = fixture_vits(a.input_size)
    if a.weights:
        estimators[f"{a.size} ({Path(a.weights).name})"] = build_depth_anything_v2(a.size, a.weights, a.input_size)
    print(f"relative gap ||T(F(x)) - F(T(x))|| / ||F(x)|| over {len(images)} generated 128-px scenes")
    print(f"{'estimator':<34}{'map':<9}{'flip':>9}{'resize 0.75':>13}")
    for name, est in estimators.items():
        for m, g in gaps(est, images).items():
            print(f"{name:<34}{m:<9}{g['flip']:>9.4f}{g['resize']:>13.4f}")


if __name__ == "__main__":
    main()
