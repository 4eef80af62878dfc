"""A run folder belongs to one run: `train` refuses a folder that already holds one, unless told
to continue it (`--resume`) or to start afresh (`--overwrite`).

Without this a second `train` into the same folder appended to its `metrics.jsonl` (two rows for
one iteration) and mixed its checkpoints with the old run's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

LAST = "last_checkpoint"  # = pipeline.engine.checkpoint.LAST; not imported so that a refusal needs no torch

# what a run writes into its folder (trainer, checkpoints, metrics log, curves) and `evaluate`'s
# default output folders; nothing else in the folder is touched by --overwrite
RUN_FILES = ("metrics.jsonl", "curves.png", "config.yaml", "log.txt", "model_final.safetensors", LAST)
RUN_GLOBS = ("model_*.pth", "model_*.pth.tmp", "model_final.safetensors.tmp", "events.out.tfevents.*", LAST + ".tmp")
EVAL_DIRS = ("eval_model_*", "final_eval", "final_eval_*")  # evaluate's, and the trainer's last evaluation


class RunDirError(ValueError):
    """The run folder holds another run and neither --resume nor --overwrite was given."""


def previous_run(out_dir: str | Path) -> list[Path]:
    """The files of an earlier run in `out_dir` (checkpoints, the checkpoint marker, metrics.jsonl)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = sorted(out.glob("model_*.pth"))  # model_final.pth too
    found += [p for p in (out / LAST, out / "metrics.jsonl") if p.is_file()]
    return found


def prepare_run_dir(out_dir: str | Path, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """Refuse to mix two runs in `out_dir`; with `overwrite`, delete the earlier run's files first.

    Only the main process deletes (`is_main`); the others of a torchrun job just pass."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: continue the run, or start it afresh")
    out = Path(out_dir)
    earlier = previous_run(out)
    if not earlier or resume:
        return
    if not overwrite:
        shown = ", ".join(p.name for p in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        raise RunDirError(
            f"{out} already holds a run ({shown}): pass --resume to continue it, --overwrite to delete its "
            "checkpoints and metrics and start afresh, or choose another train.output_dir"
        )
    if not is_main:
        return
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for pattern in RUN_GLOBS:
        for p in out.glob(pattern):
            p.unlink(missing_ok=True)
    for d in (d for pattern in EVAL_DIRS for d in out.glob(pattern)):
        if d.is_dir():
            shutil.rmtree(d)
