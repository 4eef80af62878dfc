"""Load-time checks of a built `Config`: every number in its declared range, fields that must agree,
and schedules that run but do not do what was meant (warnings).

Ranges come from the fields' metadata (`pipeline.config.setting(..., range="[1, inf)")`), so a
new field is checked as soon as it declares one. Every message names the dotted key and where its
value came from (the YAML file, a command-line override, or the default).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

_INTERVAL_RE = re.compile(r"\s*([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])\s*")

Where = Callable[[str], str]


class ConfigError(ValueError):
    """A config file or override that does not fit the `Config` tree."""


class ConfigWarning(UserWarning):
    """A config that loads but probably does not do what was meant (the message says why)."""


@dataclass(frozen=True)
class Interval:
    """A closed, open or half-open interval; `inf` / `-inf` for unbounded ends."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> Interval:
        m = _INTERVAL_RE.fullmatch(text)
        if m is None:
            raise ValueError(f"range {text!r} is not an interval like '[0, 1]' or '(0, inf)'")
        low, high = float(m.group(2)), float(m.group(3))
        if low > high:
            raise ValueError(f"range {text!r} is empty")
        return cls(low, high, m.group(1) == "[", m.group(4) == "]", text)

    def __contains__(self, x: float) -> bool:
        if isinstance(x, float) and math.isnan(x):
            return False
        above = x >= self.low if self.low_closed else x > self.low
        below = x <= self.high if self.high_closed else x < self.high
        return above and below


@dataclass(frozen=True)
class FieldInfo:
    """One leaf field of the tree: its dotted key, current value, default and metadata."""

    key: str
    value: Any
    default: Any
    help: str
    range: Optional[str]


def leaf_fields(cfg: Any, prefix: str = "") -> Iterator[FieldInfo]:
    """Every non-section field of a dataclass tree: a section's own fields first, then its subsections."""
    sections = []
    for f in dataclasses.fields(cfg):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sections.append((value, key))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        yield FieldInfo(key, value, default, f.metadata.get("help", ""), f.metadata.get("range"))
    for value, key in sections:
        yield from leaf_fields(value, key)


def check_config(cfg: Any, where: Where) -> list[str]:
    """Raise `ConfigError` for a value out of range or fields that contradict each other; return warnings."""
    check_ranges(cfg, where)
    check_consistency(cfg, where)
    return schedule_warnings(cfg, where)


def check_ranges(cfg: Any, where: Where) -> None:
    for info in leaf_fields(cfg):
        if info.range is None or info.value is None:
            continue
        interval = Interval.parse(info.range)
        values = info.value if isinstance(info.value, list) else [info.value]
        for i, v in enumerate(values):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v not in interval:
                key = f"{info.key}[{i}]" if isinstance(info.value, list) else info.key
                raise ConfigError(f"{where(info.key)}: '{key}' must be in {info.range}, got {v!r} ({info.help})")


def _kv(cfg: Any, key: str, where: Where) -> str:
    """`key=value (source)` for messages."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return f"{key}={value} ({where(key)})"


def check_consistency(cfg: Any, where: Where) -> None:
    """Fields that are each in range but cannot hold together."""
    kv = lambda key: _kv(cfg, key, where)  # noqa: E731 - a local shorthand for the messages
    if cfg.data.min_scale > cfg.data.max_scale:
        raise ConfigError(f"{kv('data.min_scale')} is above {kv('data.max_scale')}")
    if cfg.model.hidden_dim % cfg.model.nheads:
        raise ConfigError(f"{kv('model.hidden_dim')} is not a multiple of {kv('model.nheads')} "
                          "(each attention head takes hidden_dim / nheads channels)")
    ctl = cfg.semi.controller
    if ctl.kind != "scheduled" and not ctl.min_weight <= ctl.init_weight <= ctl.max_weight:
        raise ConfigError(f"the Depth Controller needs min_weight <= init_weight <= max_weight, got "
                          f"{kv('semi.controller.min_weight')}, {kv('semi.controller.init_weight')}, "
                          f"{kv('semi.controller.max_weight')}")
    if cfg.train.steps and cfg.train.step_fractions:
        raise ConfigError(f"give {kv('train.steps')} or {kv('train.step_fractions')}, not both")
    est = cfg.depth.estimator
    if est.name.startswith("depth-anything-v2") and est.input_size % 14:
        raise ConfigError(f"{kv('depth.estimator.input_size')} is not a multiple of 14, the patch size of "
                          f"{est.name} (518 is the official size; 266, 364 are cheaper on a CPU)")
    if cfg.depth.mode == "none" and cfg.model.depth_fusion.enabled:
        raise ConfigError(f"{kv('model.depth_fusion.enabled')} needs depth features, but {kv('depth.mode')}: "
                          "set model.depth_fusion.enabled=false or choose depth.mode cache/online")
    fusion = cfg.model.depth_fusion
    if fusion.enabled and est.name == "files":
        for level, name in sorted(fusion.sources.items()):
            stride = files_level_stride(name)
            if stride is not None and stride < cfg.data.feature_stride:
                raise ConfigError(
                    f"model.depth_fusion.sources reads {name} (stride {stride}) for {level} "
                    f"({where('model.depth_fusion.sources')}), but {kv('data.feature_stride')} resamples every "
                    f"cached level to stride {cfg.data.feature_stride} before the model sees it, so the detail "
                    f"{name} was cached for is lost: set data.feature_stride={stride} (coarser levels are then "
                    "resized up, which loses nothing)")
    if cfg.semi.enabled and not cfg.semi.teacher_checkpoint and cfg.semi.teacher_iters > cfg.train.max_iter:
        raise ConfigError(f"{kv('semi.teacher_iters')} is longer than {kv('train.max_iter')}: stage B would start "
                          "after the run ends; raise train.max_iter to semi.teacher_iters (stage A alone) or above")
    if cfg.depth.mode == "none" and cfg.semi.enabled and cfg.semi.depth_pseudo_labels:
        raise ConfigError(f"{kv('semi.depth_pseudo_labels')} needs depth for the teacher's depth view, but "
                          f"{kv('depth.mode')}: set semi.depth_pseudo_labels=false or choose depth.mode cache/online")


def files_level_stride(name: str) -> int | None:
    """The stride k of a files-source level `depth_s{k}`, None for any other name."""
    match = re.fullmatch(r"depth_s(\d+)", name)
    return int(match.group(1)) if match else None


def stage_lengths(cfg: Any) -> dict[str, int]:
    """Iterations of each stage that has its own LR schedule ('run', or 'stage A' / 'stage B')."""
    t, s = cfg.train, cfg.semi
    if not s.enabled:
        return {"the run": t.max_iter}
    if s.teacher_checkpoint:
        return {"stage B": t.max_iter}
    return {"stage A": s.teacher_iters, "stage B": t.max_iter - s.teacher_iters}


def schedule_warnings(cfg: Any, where: Where) -> list[str]:
    """Schedules that run but defeat their purpose: each message names the keys and their sources."""
    kv = lambda key: _kv(cfg, key, where)  # noqa: E731
    t, s = cfg.train, cfg.semi
    out = []
    stages = stage_lengths(cfg)
    if s.enabled and not s.teacher_checkpoint:
        length_b = stages["stage B"]
        if 0 < length_b <= s.burn_in_iter:
            out.append(f"{kv('semi.burn_in_iter')} is not shorter than stage B's {length_b} steps "
                       f"({kv('train.max_iter')} - {kv('semi.teacher_iters')}): the teacher stays the frozen "
                       "stage-A model and is never updated from the student; lower semi.burn_in_iter or "
                       "lengthen stage B")
    elif s.enabled and 0 < t.max_iter <= s.burn_in_iter:
        out.append(f"{kv('semi.burn_in_iter')} is not shorter than stage B's {t.max_iter} steps "
                   f"({kv('train.max_iter')}, from {kv('semi.teacher_checkpoint')}): the teacher is never "
                   "updated from the student")
    if t.warmup_iters > 0:
        for name, length in stages.items():
            if 0 < length <= t.warmup_iters:
                out.append(f"{kv('train.warmup_iters')} is not shorter than {name} ({length} steps): the learning "
                           f"rate never reaches {kv('train.lr')}")
    if t.schedule == "step":
        start = 0
        for name, length in stages.items():
            if t.step_fractions:
                inside = [f for f in t.step_fractions if round(f * length) < length]
            else:
                inside = [m for m in t.steps if start <= m < start + length]
            if length > 0 and not inside:
                out.append(f"{kv('train.schedule')} but no milestone of {kv('train.steps')} / "
                           f"{kv('train.step_fractions')} falls inside {name} ({length} steps): its learning "
                           "rate never decays (each stage has its own schedule)")
            start += length
    for key in ("train.eval_period", "train.checkpoint_period"):
        period = getattr(t, key.split(".")[1])
        if period > t.max_iter:
            out.append(f"{kv(key)} is beyond the run ({kv('train.max_iter')}): it happens only at the last step")
    return out
