"""dgseg: depth-guided semi-supervised instance segmentation.

The public API; everything else is reachable as `dgseg.pipeline.*` and `dgseg.depth_cache.*`:

    from dgseg import load_config, precompute, train, evaluate, Predictor

    cfg = load_config("demo")          # a shipped config by name, or a YAML path
    precompute(cfg)                    # stage one: the depth cache of the config's images
    train(cfg)                         # stage two: supervised, or teacher-student when semi.enabled
    evaluate(cfg, "runs/demo")         # COCO mask AP of a run's weights
    predictor = Predictor.from_run("runs/demo")

Names are imported on first use, so `import dgseg` (and the CLI's --help) stays fast.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dgseg")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"

_API = {
    "Config": "dgseg.pipeline.config",
    "ConfigError": "dgseg.pipeline.config",
    "load_config": "dgseg.pipeline.config",
    "shipped_configs": "dgseg.pipeline.config",
    "precompute": "dgseg.pipeline.precompute",
    "train": "dgseg.pipeline.train",
    "evaluate": "dgseg.pipeline.engine.evaluate",
    "Predictor": "dgseg.pipeline.engine.predictor",
    "Prediction": "dgseg.pipeline.engine.predictor",
}
_RENAMED = {"evaluate": "evaluate_checkpoint"}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'dgseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
