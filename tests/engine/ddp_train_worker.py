"""One process of a `torchrun` training run in the tests: `train()` as `cli.py train` calls it, with the
Depth Controller's weight after every update written to `<OUT>.rank<r>.json` (the run logs rank 0 only).

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/engine/ddp_train_worker.py CONFIG OUT [--resume]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout, not an installed copy

import dgseg.pipeline.semi.trainer as semi_trainer  # noqa: E402
from dgseg.pipeline.config.loading import load_config  # noqa: E402
from dgseg.pipeline.train import train  # noqa: E402


def main() -> None:
    config, out = sys.argv[1], sys.argv[2]
    weights: list[list[float]] = []
    build = semi_trainer.build_controller

    def recording(cfg):
        controller = build(cfg)
        update = controller.update

        def update_and_record(step, stats=None):
            w = update(step, stats)
            weights.append([step, w])
            return w

        controller.update = update_and_record
        return controller

    semi_trainer.build_controller = recording
    train(load_config(Path(config)), resume="--resume" in sys.argv)
    Path(f"{out}.rank{os.environ['RANK']}.json").write_text(json.dumps(weights))


if __name__ == "__main__":
    main()
