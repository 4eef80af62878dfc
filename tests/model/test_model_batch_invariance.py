"""An image's predictions do not depend on the batch it is evaluated in.

Images of several sizes and aspect ratios (portrait, landscape, square, one exactly a multiple of
32) with Depth Fusion on features of a network estimator (tiny Depth Anything V2), read through the
cache and the dataset as evaluation reads them, predicted alone and in batches with larger images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "depth_cache"))
from cache_helpers import make_images  # noqa: E402
from dgseg.depth_cache.config import CacheConfig, EstimatorConfig  # noqa: E402
from dgseg.depth_cache.images import records_from_json  # noqa: E402
from dgseg.depth_cache.precompute import run_precompute  # noqa: E402
from dgseg.depth_cache.reader import open_cache  # noqa: E402
from dgseg.pipeline.config import EvalConfig, ModelConfig  # noqa: E402
from dgseg.pipeline.data.collate import collate  # noqa: E402
from dgseg.pipeline.data.dataset import UnlabeledDataset  # noqa: E402
from dgseg.pipeline.data.transforms import build_test_transforms  # noqa: E402
from dgseg.pipeline.engine.depth_source import DepthProvider  # noqa: E402
from dgseg.pipeline.engine.inference import predict_loader  # noqa: E402
from dgseg.pipeline.model.build import build_model  # noqa: E402

# (H, W) on disk; at test size 64: 64x85, 85x64 (portrait), 64x91, 64x64 (no padding alone),
# 64x160 (wide), 112x64 (tall)
SIZES = [(48, 64), (64, 48), (33, 47), (50, 50), (30, 75), (70, 40)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("invariance")
    listing = make_images(root / "img", SIZES, seed=1)
    est = EstimatorConfig(name="tiny", input_size=42, device="cpu", precision="fp32")
    cache = CacheConfig(root=str(root / "caches"), levels=["path_4", "path_3"], depth_stride=2, shard_size=8,
                        batch_size=3, num_workers=0)  # fmt: skip
    run_precompute(records_from_json(listing, root / "img"), est, cache, progress=False)
    reader = open_cache(cache.root, est, cache)
    ds = UnlabeledDataset(root / "img", listing, build_test_transforms(64, 8), reader,
                          feature_levels=["path_4", "path_3"])  # fmt: skip
    return ds, reader.feature_channels()


def _model(channels: dict[str, int], recipe: str = "default"):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", hidden_dim=32, mask_dim=16, num_queries=8, nheads=2,
                      dim_feedforward=64, dec_layers=3, enc_layers=2)  # fmt: skip
    cfg.depth_fusion.sources = {"res2": "path_3", "res3": "path_3", "res4": "path_4", "res5": "path_4"}
    if recipe == "from-scratch":  # the demo's recipe: fusion inside the backbone, RoI class head
        cfg.depth_fusion.inside_backbone = True
        cfg.depth_fusion.init = "open"
        cfg.roi_classifier = True
    model = build_model(cfg, 3, {k: channels[k] for k in ("path_3", "path_4")}).eval()
    if cfg.roi_classifier:  # its last layer starts at zero: give it weights, so its boxes are tested too
        torch.nn.init.normal_(model.transformer_decoder.roi_classifier.out.weight, std=0.5)
    return model


def _predict(model, ds, channels, batch_size: int, order: list[int]) -> dict[str, dict]:
    subset = torch.utils.data.Subset(ds, order)
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    provider = DepthProvider("cache", channels)
    return dict(predict_loader(model, loader, torch.device("cpu"), provider, EvalConfig(max_detections=10), True,
                               show_progress=False))


@pytest.mark.parametrize("recipe", ["default", "from-scratch"])
def test_predictions_are_the_same_alone_and_in_any_batch(dataset, recipe):
    ds, channels = dataset
    model = _model(channels, recipe)
    n = len(ds)
    alone = _predict(model, ds, channels, 1, list(range(n)))
    batches = {
        "all": _predict(model, ds, channels, n, list(range(n))),
        "shuffled, triples": _predict(model, ds, channels, 3, [4, 0, 5, 2, 1, 3]),
    }
    for name, preds in batches.items():
        for image_id, want in alone.items():
            got = preds[image_id]
            where = f"image {image_id} ({ds.images[int(image_id) - 1]['height']}x" \
                    f"{ds.images[int(image_id) - 1]['width']}) in batch '{name}'"
            assert torch.allclose(got["scores"], want["scores"], atol=1e-4, rtol=0), where
            assert torch.equal(got["labels"], want["labels"]), where
            assert got["masks"].shape == want["masks"].shape, where
            differ = (got["masks"] != want["masks"]).flatten(1).sum(1)
            assert int(differ.max()) <= 4, f"{where}: masks differ in {differ.tolist()} pixels"


def test_padding_mask_matches_what_the_model_pads_itself(dataset):
    # an unpadded 64x85 image: the model pads it to 64x96 and masks that padding itself
    ds, channels = dataset
    model = _model(channels)
    sample = ds[0]
    batch = collate([sample])
    with torch.no_grad():
        padded = model(batch.images, batch.features, ~batch.valid)
        h, w = sample.size
        fh, fw = -(-h // 8), -(-w // 8)
        raw = model(sample.image[None], {k: v[None, :, :fh, :fw] for k, v in sample.features.items()})
    torch.testing.assert_close(raw["pred_logits"], padded["pred_logits"], atol=1e-5, rtol=0)
    mh, mw = raw["pred_masks"].shape[-2:]
    torch.testing.assert_close(raw["pred_masks"], padded["pred_masks"][..., :mh, :mw], atol=1e-4, rtol=0)
