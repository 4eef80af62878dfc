"""`cli.py predict`: segment new images and draw the masks over them.

New images are in no cache, so this is the one stage-two path that runs the depth source itself
(a network estimator online, or the `files` source reading the image's depth map by file stem),
with the same normalisation the cache applies.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.config import Config
from pipeline.engine.checkpoint import load_checkpoint, load_model_state, resolve_checkpoint
from pipeline.engine.depth_source import needed_levels
from pipeline.engine.distributed import pick_device

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: list[Path]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted)."""
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"predict: no such image or folder: {p}")
    if not out:
        raise FileNotFoundError(f"predict: no images in {', '.join(map(str, inputs))}")
    return out


class ImageDepth:
    """Depth map and features of one new image, from the configured source."""

    def __init__(self, cfg: Config, levels: list[str], device: torch.device) -> None:
        from depth_cache.estimators import build_source
        from depth_cache.estimators.files import FilesDepth
        from depth_cache.online import OnlineDepth

        source = build_source(cfg.depth.estimator, levels)
        self.files = source if isinstance(source, FilesDepth) else None
        self.online = None if self.files else OnlineDepth(source.to(device), cfg.depth.cache.depth_stride)
        self.device = device

    def __call__(self, image: torch.Tensor, path: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """image (3, H, W) in [0, 1] -> depth (1, h, w), features {name: (C, h', w')} covering the image."""
        if self.files is not None:
            out = self.files(self.files.load(path.stem, tuple(image.shape[-2:])))
            return out.depth, {k: v[0] for k, v in out.features.items()}
        entry = self.online(image[None].to(self.device))[0]
        return entry.depth.cpu(), {k: v.float().cpu() for k, v in entry.features.items()}


@torch.no_grad()
def predict_images(cfg: Config, checkpoint: str | Path, inputs: list[Path], out_dir: Path,
                   which: str = "auto", score_threshold: float = 0.5) -> list[Path]:
    """Write `<stem>.png` (masks drawn over the image) and `predictions.json` into `out_dir`.

    `checkpoint`: a file, or a run folder (its last checkpoint)."""
    from pipeline.data.collate import collate
    from pipeline.data.dataset import read_image
    from pipeline.data.sample import new_sample
    from pipeline.data.transforms import build_test_transforms
    from pipeline.evaluation import save_instances_png
    from pipeline.evaluation.results import encode_masks
    from pipeline.model.build import build_model
    from pipeline.model.postprocess import postprocess

    device = pick_device(cfg.train.device)
    checkpoint = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    key = which if which != "auto" else ("teacher" if "teacher" in ckpt else "model")
    levels = needed_levels(cfg)
    depth = ImageDepth(cfg, levels, device) if levels else None
    channels = {}
    if depth is not None:
        probe = read_image(list_images(inputs)[0])
        channels = {k: int(v.shape[0]) for k, v in depth(probe, list_images(inputs)[0])[1].items()}
    model = build_model(cfg.model, cfg.data.num_classes, channels)
    load_model_state(model, ckpt[key], f"{checkpoint} [{key}]")
    model.to(device).eval()
    transforms = build_test_transforms(cfg.data.test_size, cfg.data.feature_stride, cfg.data.test_max_size)
    names = _class_names(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, records = [], []
    for path in tqdm(list_images(inputs), desc="predict"):
        image = read_image(path)
        d, feats = depth(image, path) if depth is not None else (None, {})
        sample = transforms(new_sample(image, depth=d, features=feats, image_id=path.stem))
        batch = collate([sample]).to(device)
        outputs = model(batch.images, batch.features if depth is not None else None)
        pred = postprocess(outputs, [(int(sample.valid.any(1).sum()), int(sample.valid.any(0).sum()))],
                           [tuple(image.shape[-2:])], cfg.eval.max_detections)[0]
        pred = {k: v.cpu() for k, v in pred.items()}
        target = out_dir / f"{path.stem}.png"
        save_instances_png(image, pred, target, names, score_threshold=score_threshold)
        written.append(target)
        keep = pred["scores"] >= score_threshold
        records.append({
            "file": str(path), "labels": pred["labels"][keep].tolist(), "scores": pred["scores"][keep].tolist(),
            "segmentations": encode_masks(pred["masks"][keep]),
        })
    (out_dir / "predictions.json").write_text(json.dumps(records))
    return written


def _class_names(cfg: Config) -> list[str] | None:
    """Category names from the val annotations when they are at hand (for labels on the pictures)."""
    path = Path(cfg.data.val_json)
    if not path.is_file():
        return None
    cats = sorted(json.loads(path.read_text()).get("categories", []), key=lambda c: c["id"])
    return [c["name"] for c in cats] or None
