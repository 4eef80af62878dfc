"""Depth sources by name: a plain dict of builders (no registration by import side effects).

`build_source(cfg, levels)` returns a `DepthEstimator` (network names) or a `FilesDepth`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

from dgseg.depth_cache.config import EstimatorConfig
from dgseg.depth_cache.estimators.base import DepthEstimator
from dgseg.depth_cache.estimators.files import FilesDepth

DepthSource = Union[DepthEstimator, FilesDepth]


def _dav2(size: str) -> Callable[[EstimatorConfig, list[str]], DepthSource]:
    def build(cfg: EstimatorConfig, levels: list[str]) -> DepthSource:
        from dgseg.depth_cache.estimators.depth_anything_v2 import build_depth_anything_v2

        if cfg.weights is None:
            raise ValueError(f"estimator depth-anything-v2-{size} needs a weights file (--weights / estimator.weights)")
        return build_depth_anything_v2(size, weights=cfg.weights, input_size=cfg.input_size, levels=levels)

    return build


def _tiny(cfg: EstimatorConfig, levels: list[str]) -> DepthSource:
    from dgseg.depth_cache.estimators.depth_anything_v2 import build_tiny

    return build_tiny(seed=cfg.seed, input_size=cfg.input_size, levels=levels)


def _files(cfg: EstimatorConfig, levels: list[str]) -> DepthSource:
    if cfg.depth_dir is None:
        raise ValueError("estimator `files` needs a depth folder (--depth-dir / estimator.depth_dir)")
    return FilesDepth(cfg.depth_dir, cfg.depth_kind, levels, cfg.allow_symlinks_outside)


BUILDERS: dict[str, Callable[[EstimatorConfig, list[str]], DepthSource]] = {
    **{f"depth-anything-v2-{s}": _dav2(s) for s in ("vits", "vitb", "vitl", "vitg")},
    "tiny": _tiny,
    "files": _files,
}


def build_source(cfg: EstimatorConfig, levels: list[str]) -> DepthSource:
    """The depth source named by `cfg.name`, producing the feature `levels`; unknown names list the valid ones."""
    try:
        builder = BUILDERS[cfg.name]
    except KeyError:
        raise ValueError(f"unknown estimator {cfg.name!r}; valid: {', '.join(BUILDERS)}") from None
    return builder(cfg, list(levels))
