"""`cli.py train`: the one entry over both recipes.

The supervised loop (`pipeline.engine.trainer`) is the lower layer and the teacher-student loop
(`pipeline.semi.trainer`) builds on its skeleton; choosing between them happens here, above both,
so neither imports the other.
"""

from __future__ import annotations

import os

from dgseg.pipeline.config import Config
from dgseg.pipeline.engine.tb_log import run_logging
from dgseg.pipeline.engine.trainer import train_supervised
from dgseg.pipeline.semi.trainer import train_semi


def train(cfg: Config, resume: bool = False) -> dict:
    """Supervised training, or both stages of the teacher-student recipe when `semi.enabled`;
    returns the last evaluation's metrics."""
    # log.txt for this run only (the handler goes when it ends); other processes of a torchrun job log nothing
    with run_logging(cfg.train.output_dir, is_main=int(os.environ.get("RANK", "0")) == 0):
        if cfg.semi.enabled:
            return train_semi(cfg, resume=resume)
        return train_supervised(cfg, resume=resume)
