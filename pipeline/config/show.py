"""`cli.py config show`: the resolved config, each key with its value, default, source and meaning."""

from __future__ import annotations

import json
from typing import Any

from dgseg.pipeline.config.checks import leaf_fields
from dgseg.pipeline.config.loading import ResolvedConfig


def _fmt(value: Any) -> str:
    # JSON spelling of lists, dicts, null and booleans is also valid YAML, so a shown value can be pasted
    return value if isinstance(value, str) else json.dumps(value)


def _section_doc(cfg: Any, prefix: str) -> str:
    node = cfg
    for part in prefix.split("."):
        node = getattr(node, part)
    return (type(node).__doc__ or "").strip().splitlines()[0]


def format_config(resolved: ResolvedConfig, changed_only: bool = False) -> str:
    """Text listing grouped by section: `key = value  (default ...; set by ...)` and its meaning below.

    A `*` marks values that differ from the default."""
    lines: list[str] = []
    section = None
    for info in leaf_fields(resolved.config):
        differs = info.value != info.default
        if changed_only and not differs:
            continue
        prefix, name = info.key.rsplit(".", 1)
        if prefix != section:
            section = prefix
            lines += ["", f"[{prefix}]  {_section_doc(resolved.config, prefix)}"]
        source = resolved.where(info.key)
        detail = (f"default {_fmt(info.default)}" if differs else "the default") + (
            "" if source == "default" else f"; from {source}")
        lines.append(f"  {'*' if differs else ' '} {name} = {_fmt(info.value)}   ({detail})")
        lines.append(f"        {info.help}" + (f"; range {info.range}" if info.range else ""))
    return "\n".join(lines).lstrip("\n")
