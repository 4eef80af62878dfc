"""Append-only JSONL metrics log of a run (one dict per line), safe to resume into.

Every record also goes to the "dgseg" logger (the terminal and `log.txt`) and, when tensorboard is
installed, every number in it becomes a TensorBoard scalar of that iteration.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from dgseg.pipeline.engine.tb_log import LOGGER, format_record, open_tensorboard


class MetricsLog:
    def __init__(self, path: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._tensorboard = enabled and tensorboard
        self._writer: Any = None
        self._purge_step: int | None = None

    @property
    def writer(self) -> Any | None:
        """The run's TensorBoard `SummaryWriter` (opened on first use), or None."""
        if self._tensorboard and self._writer is None:
            self._writer = open_tensorboard(self.path.parent, self._purge_step)
            self._tensorboard = self._writer is not None  # not installed: said once, never tried again
        return self._writer

    def truncate_after(self, iteration: int) -> None:
        """On resume, drop lines logged after the checkpoint so the log reads as one run."""
        self._purge_step = iteration + 1
        if not (self.enabled and self.path.is_file()):
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("iter", 0) <= iteration]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        LOGGER.info(format_record(clean))
        writer = self.writer
        if writer is not None:
            step = int(record.get("iter", 0))
            for key, value in clean.items():
                if key != "iter" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(key, value, step)
            writer.flush()  # a run killed later keeps what it logged

    def images(self, tag: str, pictures: list[np.ndarray], iteration: int) -> None:
        """(H, W, 3) uint8 pictures as TensorBoard images `tag/0`, `tag/1`, ... (nothing without tensorboard)."""
        writer = self.writer if self.enabled else None
        if writer is None:
            return
        for i, pic in enumerate(pictures):
            writer.add_image(f"{tag}/{i}", pic, iteration, dataformats="HWC")
        writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
