"""A run's records as its users read them: `log.txt` (what the terminal shows) and TensorBoard events.

`run_logging(out_dir)` attaches one file handler and one terminal handler to the "dgseg" logger
for the length of one run and removes them afterwards, so two runs in one process (tests,
notebooks) never write into each other's `log.txt`. TensorBoard is optional (`pip install
dgseg[tensorboard]`): without it `open_tensorboard` says once per run that it is off.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

LOGGER = logging.getLogger("dgseg")
LOG_FILE = "log.txt"
TB_GLOB = "events.out.tfevents.*"  # SummaryWriter's event files, in the run folder as detectron2 writes them
PICTURES = 4  # validation images drawn into TensorBoard at each evaluation


class _TqdmHandler(logging.Handler):
    """Terminal lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record))


@contextmanager
def run_logging(out_dir: str | Path, is_main: bool = True) -> Iterator[Path | None]:
    """`log.txt` in `out_dir` (appended on resume) and the same lines on the terminal, for one run."""
    if not is_main:
        yield None
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(out / LOG_FILE, mode="a", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    terminal = _TqdmHandler()
    terminal.setFormatter(logging.Formatter("%(message)s"))
    level = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    LOGGER.addHandler(file_handler)
    LOGGER.addHandler(terminal)
    try:
        LOGGER.info("run folder %s", out)
        yield out / LOG_FILE
    finally:
        for handler in (file_handler, terminal):
            LOGGER.removeHandler(handler)
            handler.close()
        LOGGER.setLevel(level)


def open_tensorboard(out_dir: Path, purge_step: int | None = None) -> Any | None:
    """A `SummaryWriter` into the run folder, or None (said once) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        LOGGER.info("TensorBoard logging is off: tensorboard is not installed (pip install 'dgseg[tensorboard]')")
        return None
    # purge_step: a resumed run hides the events logged after its checkpoint, as metrics.jsonl drops them
    return SummaryWriter(log_dir=str(out_dir), purge_step=purge_step)


def format_record(record: dict[str, Any]) -> str:
    """One metrics record as a terminal line (detectron2's "iter: 20  loss: 1.234  lr: 0.0001")."""
    parts = [f"iter: {record.get('iter')}"]
    for key, value in record.items():
        if key == "iter" or value is None:
            continue
        parts.append(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    return "  ".join(parts)


@torch.no_grad()
def val_pictures(model: torch.nn.Module, loader, device: torch.device, provider, eval_cfg, use_depth: bool,
                 class_names: list[str] | None = None, count: int = PICTURES,
                 score_threshold: float = 0.5) -> list[np.ndarray]:
    """The first `count` validation images with the model's instances drawn over them, (H, W, 3) uint8."""
    from dgseg.pipeline.engine.inference import mask_stride_of, postprocess_outputs
    from dgseg.pipeline.evaluation.visualize import draw_instances

    was_training = model.training
    model.eval()
    batch = next(iter(loader)).to(device)
    provider.fill(batch)
    outputs = model(batch.images, batch.features if use_depth else None, ~batch.valid)
    sizes = [(int(v.any(1).sum()), int(v.any(0).sum())) for v in batch.valid]
    preds = postprocess_outputs(outputs, sizes, sizes, eval_cfg, mask_stride_of(model))
    model.train(was_training)
    out = []
    for image, (h, w), pred in list(zip(batch.images, sizes, preds, strict=True))[:count]:
        drawn = draw_instances(image[:, :h, :w].cpu(), {k: v.cpu() for k, v in pred.items()}, class_names,
                               score_threshold=score_threshold)
        out.append(np.asarray(drawn))
    return out
