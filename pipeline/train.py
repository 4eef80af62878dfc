"""`cli.py train`: the one entry over both recipes.

The supervised loop (`pipeline.engine.trainer`) is the lower layer and the teacher-student loop
(`pipeline.semi.trainer`) builds on its skeleton; choosing between them happens here, above both,
so neither imports the other.
"""

from __future__ import annotations

from dgseg.pipeline.config import Config
from dgseg.pipeline.engine.trainer import train_supervised
from dgseg.pipeline.semi.trainer import train_semi


def train(cfg: Config, resume: bool = False) -> dict:
    """Supervised training, or both stages of the teacher-student recipe when `semi.enabled`;
    returns the last evaluation's metrics."""
    if cfg.semi.enabled:
        return train_semi(cfg, resume=resume)
    return train_supervised(cfg, resume=resume)
