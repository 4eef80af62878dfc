"""The rows of a results folder as docs/results.md shows them: each run's last evaluation, seeds pooled.

python scripts/results_table.py RUNS_DIR [--curves]
python scripts/results_table.py --parts RUN_DIR ...

A row is every run `NAME` or `NAME_seedK` of the folder that finished (`final_eval/metrics.json`): the mean
mask AP over its seeds, their spread (max - min) and each seed's AP, then the student's AP where the run
kept one (stage B). `--curves` adds the val AP at each evaluation of every run that evaluated more than
twice (a stage-A run to its plateau). `--parts` prints, for runs trained with `train.time_parts=true`, the
seconds per step of each timed part and of the whole step, leaving out the intervals that held an evaluation.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from statistics import mean

SEED = re.compile(r"^(?P<name>.+?)(?:_seed(?P<seed>\d+))?$")


def final_ap(run: Path, which: str = "final_eval") -> float | None:
    path = run / which / "metrics.json"
    return json.loads(path.read_text())["AP"] if path.is_file() else None


def run_dirs(folder: Path) -> list[Path]:
    """The run folders under `folder` by name, each once: a link to a run already listed is not a second run."""
    unique: dict[Path, Path] = {}
    for run in sorted(p for p in folder.iterdir() if p.is_dir()):
        unique.setdefault(run.resolve(), run)
    return list(unique.values())


def rows(folder: Path) -> dict[str, dict[int, Path]]:
    """{row name: {seed: run folder}} of the finished runs under `folder`."""
    out: dict[str, dict[int, Path]] = {}
    for run in run_dirs(folder):
        if final_ap(run) is None:
            continue
        m = SEED.match(run.name)
        out.setdefault(m["name"], {})[int(m["seed"] or 0)] = run
    return out


def fmt(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def table(folder: Path) -> list[str]:
    lines = ["| run | seeds | mask AP, mean | spread | per seed | student, mean |", "|---|---|---|---|---|---|"]
    for name, seeds in rows(folder).items():
        aps = [final_ap(seeds[s]) for s in sorted(seeds)]
        students = [a for a in (final_ap(seeds[s], "final_eval_student") for s in sorted(seeds)) if a is not None]
        student = f"{mean(students):.2f}" if students else ""
        lines.append(f"| `{name}` | {len(aps)} | {mean(aps):.2f} | {max(aps) - min(aps):.2f} | {fmt(aps)} "
                     f"| {student} |")
    return lines


def curves(folder: Path) -> list[str]:
    lines = []
    for run in (r for r in run_dirs(folder) if (r / "metrics.jsonl").is_file()):
        points = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        points = [(r["iter"], r["val/AP"]) for r in points if r.get("val/AP") is not None]
        if len(points) > 2:
            lines.append(f"- `{run.name}` val AP by iteration: " + ", ".join(f"{i}: {ap:.2f}" for i, ap in points))
    return lines


def step_parts(run: Path) -> dict[str, float]:
    """Seconds per step of every `time/*` part (cumulative in the log) and of the step, evaluations left out."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = {r["iter"] for r in records if r.get("val/AP") is not None}
    logged = [r for r in records if "time" in r][1:]  # the first interval holds start-up
    # an evaluation runs after its step's row is logged, so it falls in the interval that row starts
    pairs = [(a, b) for a, b in zip(logged[:-1], logged[1:], strict=True) if a["iter"] not in evals]
    steps = sum(b["iter"] - a["iter"] for a, b in pairs)
    out = {"step": sum(b["time"] - a["time"] for a, b in pairs) / steps}
    first, last = logged[0], logged[-1]
    n = last["iter"] - first["iter"]
    out.update({k[5:]: (v - first.get(k, 0.0)) / n for k, v in last.items() if k.startswith("time/")})
    out["data wait"] = (last["data_time"] - first["data_time"]) / n
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--parts"] and len(argv) > 1:
        for run in map(Path, argv[1:]):
            print(f"{run}: " + ", ".join(f"{k} {v:.3f}" for k, v in step_parts(run).items()) + " (s/step)")
        return 0
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(argv[0])
    if not folder.is_dir():
        print(f"results_table: no folder {folder}", file=sys.stderr)
        return 2
    print("\n".join(table(folder)))
    if "--curves" in argv[1:]:
        print("\n" + "\n".join(curves(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
