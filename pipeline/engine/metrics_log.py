"""Append-only JSONL metrics log of a run (one dict per line), safe to resume into."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, iteration: int) -> None:
        """On resume, drop lines logged after the checkpoint so the log reads as one run."""
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

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
