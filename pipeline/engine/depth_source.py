"""How stage two gets depth for a batch: from the cache (read by the dataset), online, or not at all.

Only the `online` mode builds an estimator; `cache` mode never does (the training data reads
the cache, and the engine only needs the cache's manifest for the feature channel counts).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dgseg.pipeline.config import Config


class DepthProvider:
    """Fills `batch.depth` / `batch.features` where the dataset did not (the `online` mode)."""

    def __init__(self, mode: str, channels: dict[str, int], online=None, feature_stride: int = 8) -> None:
        self.mode = mode
        self.channels = channels  # feature name -> channel count, for building Depth Fusion
        self.online = online
        self.feature_stride = feature_stride

    @torch.no_grad()
    def fill(self, batch) -> None:
        if self.mode != "online":
            return
        entries = self.online(batch.images)
        h, w = batch.images.shape[-2:]
        # online maps cover the whole (padded) canvas, so plain resizes put them on the batch grid
        batch.depth = torch.stack(
            [F.interpolate(e.depth[None].to(batch.images), size=(h, w), mode="bilinear", align_corners=False)[0]
             for e in entries]
        ) * batch.valid[:, None].to(batch.images)
        size = (-(-h // self.feature_stride), -(-w // self.feature_stride))
        batch.features = {
            name: torch.stack(
                [F.interpolate(e.features[name][None].to(batch.images), size=size, mode="bilinear",
                               align_corners=False)[0] for e in entries]
            )
            for name in self.channels
        }


def needed_levels(cfg: Config) -> list[str]:
    """Feature levels the model reads (Depth Fusion sources; that depth.mode provides them is checked at
    load time, in pipeline/config/checks.py)."""
    if not cfg.model.depth_fusion.enabled:
        return []
    return sorted(set(cfg.model.depth_fusion.sources.values()))


def open_reader(cfg: Config):
    """The cache reader for `cache` mode (None otherwise); refuses a cache made by other settings."""
    if cfg.depth.mode != "cache":
        return None
    from dgseg.depth_cache.reader import open_cache

    # not a load-time check: precompute-depth may fill a cache for another model's sources
    missing = [lv for lv in needed_levels(cfg) if lv not in cfg.depth.cache.levels]
    if missing:
        raise ValueError(
            f"Depth Fusion reads level(s) {missing} that depth.cache.levels {cfg.depth.cache.levels} does not store"
        )
    return open_cache(cfg.depth.cache.root, cfg.depth.estimator, cfg.depth.cache)


def build_provider(cfg: Config, reader, device: torch.device) -> DepthProvider:
    levels = needed_levels(cfg)
    if cfg.depth.mode == "cache":
        stored = reader.feature_channels()
        channels = {name: stored[name] for name in levels}
        return DepthProvider("cache", channels, feature_stride=cfg.data.feature_stride)
    if cfg.depth.mode == "online":
        from dgseg.depth_cache.estimators import build_source
        from dgseg.depth_cache.online import OnlineDepth

        source = build_source(cfg.depth.estimator, levels)
        online = OnlineDepth(source.to(device) if hasattr(source, "to") else source)
        info = {fi.name: fi.channels for fi in source.feature_info}
        return DepthProvider("online", {n: info[n] for n in levels}, online, cfg.data.feature_stride)
    return DepthProvider("none", {})
