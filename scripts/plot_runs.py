"""Overlay validation AP (and the controller weight) of several runs: the convergence plots of docs/results.md.

python scripts/plot_runs.py OUT.png LABEL=RUN_DIR[:OFFSET][,RUN_DIR[:OFFSET]] ...
(OFFSET shifts a run's iterations, e.g. 600 for a stage-B run started from a 600-iteration teacher;
several runs joined by commas make one series, e.g. a teacher run and the stage-B run after it)
"""

from __future__ import annotations

import sys
from pathlib import Path

from dgseg.pipeline.evaluation.visualize import Panel, curves_figure, read_log, save_figure


def main(argv: list[str]) -> None:
    out, specs = Path(argv[0]), argv[1:]
    ap, weight = Panel("validation mask AP (%) of the evaluated model"), Panel("Depth Controller weight w")
    for spec in specs:
        label, _, runs = spec.rpartition("=")
        pts, ws = [], []
        for part in runs.split(","):
            run, _, offset = part.partition(":")
            shift = int(offset or 0)
            rows = read_log(Path(run) / "metrics.jsonl")
            pts += [(r["iter"] + shift, r["val/AP"]) for r in rows if r.get("val/AP") is not None]
            ws += [(r["iter"] + shift, r["controller/weight"]) for r in rows if r.get("controller/weight") is not None]
        if pts:
            ap.series[label] = ([x for x, _ in pts], [y for _, y in pts])
        if ws and len({w for _, w in ws}) > 1:
            weight.series[label] = ([x for x, _ in ws], [y for _, y in ws])
    save_figure(curves_figure([ap, weight] if weight.series else [ap]), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
