"""The seams of DEVELOPERS.md, checked on the source: every import, including those inside functions.

- `depth_cache/` knows nothing of `pipeline/`;
- the model takes tensors: `pipeline.model` imports no data, cache, engine or training code;
- training data reads the cache and never builds an estimator;
- lower layers never import higher ones: `pipeline.engine` (the supervised loop and its skeleton)
  never imports `pipeline.semi` or the `pipeline.train` entry;
- nothing imports `cli.py` (but the tests of its commands), and the package never imports the benchmarks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module `path` imports, at any depth (absolute names; relative imports resolved against
    `package`, by default the file's own)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = ".".join(("dgseg", *path.relative_to(ROOT).with_suffix("").parts[:-1]))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def offending(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    names = tuple(f"dgseg.{f}" for f in forbidden)
    for path in sources(folder):
        for mod in sorted(imported_modules(path)):
            if any(mod == f or mod.startswith(f + ".") for f in names):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    return bad


RULES = [
    ("depth_cache", ("pipeline", "cli", "bench")),
    ("pipeline/model", ("pipeline.data", "pipeline.engine", "pipeline.semi", "pipeline.evaluation",
                        "pipeline.baselines", "pipeline.train", "depth_cache", "cli", "bench")),
    ("pipeline/data", ("depth_cache.estimators", "depth_cache.online", "depth_cache.precompute",
                       "pipeline.engine", "pipeline.semi", "pipeline.train", "cli", "bench")),
    ("pipeline/engine", ("pipeline.semi", "pipeline.train", "pipeline.baselines", "cli", "bench")),
    ("pipeline/semi", ("pipeline.train", "pipeline.baselines", "cli", "bench")),
    ("pipeline", ("cli", "bench")),
    ("bench", ("cli",)),
]  # fmt: skip


@pytest.mark.parametrize("folder, forbidden", RULES, ids=[r[0] for r in RULES])
def test_layer_imports_stay_below(folder, forbidden):
    assert sources(folder), folder
    assert offending(folder, forbidden) == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """A lazy import inside a function is an import too (the old trainer cycle hid in one)."""
    probe = tmp_path / "probe.py"
    probe.write_text("from .losses import x\n\ndef f():\n    from dgseg.pipeline.semi.trainer import train_semi\n"
                     "    return train_semi\n")  # fmt: skip
    mods = imported_modules(probe, package="dgseg.pipeline.engine")
    assert {"dgseg.pipeline.semi.trainer", "dgseg.pipeline.semi.trainer.train_semi",
            "dgseg.pipeline.engine.losses"} <= mods


def test_the_package_imports_only_its_own_names():
    """Inside the package every import is `dgseg.*`: a bare `pipeline.x` works in a checkout but not once
    installed, where only `dgseg` is on the path."""
    bare = [f"{p.relative_to(ROOT)} imports {m}" for folder in ("pipeline", "depth_cache", "bench")
            for p in sources(folder) for m in imported_modules(p)
            if m.split(".")[0] in ("pipeline", "depth_cache", "bench", "cli")]  # fmt: skip
    assert bare == []
