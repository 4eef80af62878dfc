"""Map YAML files and `a.b.c=value` overrides onto the typed `Config` tree.

Every error names the dotted key and where its value came from (the YAML file that set it, or
the command-line override), and is raised at load time: an unknown key, a value of the wrong
type or out of its declared range (`pipeline.config.checks`), fields that contradict each other,
a missing file. Schedules that load but defeat their purpose (a burn-in longer than stage B, ...)
give `ConfigWarning`s. A YAML file may start from another with `base: other.yaml` (resolved
relative to the file).

One merge rule, for a file over its base and for a command-line override over the files: **sections
merge, values replace**. A section (a mapping that is a part of the `Config` tree: `model`,
`model.depth_fusion`, ...) is merged key by key, so a child file or an override that sets
`model.hidden_dim` keeps every other `model` key of the base. A value replaces the earlier one whole,
even when it is itself a mapping or a list: a child's `sources: {res2: depth_s4}` leaves
`model.depth_fusion.sources` with res2 only, exactly as the override
`model.depth_fusion.sources={res2: depth_s4}` does. Every value keeps the source that set it (the file,
or the override), and `config show` names that source. A dotted override that reaches inside a value
(`model.depth_fusion.sources.res2=...`) is refused: the value is given whole.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from dgseg.pipeline.config.checks import ConfigError, ConfigWarning, check_config
from dgseg.pipeline.config.schema import Config

__all__ = ["ConfigError", "ConfigWarning", "ResolvedConfig", "config_path", "load_config", "resolve_config",
           "from_dict", "shipped_configs", "to_dict", "save_config"]

_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
DEFAULT = "default"


@dataclass
class ResolvedConfig:
    """A loaded config with the source of every key it sets and the warnings it raised."""

    config: Config
    origins: dict[str, str]  # dotted key -> the file or command-line override that set it
    warnings: list[str]

    def where(self, key: str) -> str:
        return _lookup(self.origins, key, DEFAULT)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Build a `Config` from an optional YAML file and `a.b.c=value` overrides (warnings as `ConfigWarning`)."""
    resolved = resolve_config(path, overrides)
    for message in resolved.warnings:
        warnings.warn(message, ConfigWarning, stacklevel=2)
    return resolved.config


SHIPPED = Path(__file__).resolve().parents[2] / "configs"  # dgseg/configs, in a checkout and when installed


def shipped_configs() -> list[str]:
    """The names of the configs that ship with the package (`configs/NAME.yaml`)."""
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def config_path(path: str | Path) -> Path:
    """A YAML file as given, else the shipped config of that name (`coco_5pct` or `coco_5pct.yaml`)."""
    given = Path(path)
    if given.is_file() or given.parent != Path("."):
        return given
    shipped = SHIPPED / (given.name if given.suffix in (".yaml", ".yml") else f"{given.name}.yaml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"config file not found: {path} (neither a file nor a shipped config: "
                      f"{', '.join(shipped_configs())})")


def resolve_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> ResolvedConfig:
    """`load_config` that also returns where each key came from and the warnings (not emitted).

    `path`: a YAML file, or the name of a shipped config (`dgseg config show --config coco_5pct`)."""
    raw: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        path = config_path(path)
        raw = _read_yaml_with_base(path, seen=(), origins=origins)
    for item in overrides:
        key, value = _parse_override(item)
        merge_layer(raw, _nested(Config, key, value, item), origins, f"command-line override '{item}'")
    cfg = from_dict(Config, raw, source=str(path) if path is not None else DEFAULT, origins=origins)
    found = check_config(cfg, lambda key: _lookup(origins, key, DEFAULT))
    return ResolvedConfig(cfg, origins, found)


def from_dict(cls: type, data: dict[str, Any], source: str = "<dict>", prefix: str = "",
              origins: dict[str, str] | None = None) -> Any:
    """Recursively build dataclass `cls` from `data`, checking keys and types.

    Errors name `origins[key]` (the file or override that set the key) where known, else `source`."""
    origins = origins or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_lookup(origins, prefix, source)}: '{prefix or '<root>'}' must be a mapping, "
                          f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = prefix or "<root>"
        by_origin: dict[str, list[str]] = {}
        for k in unknown:
            key = _join(prefix, k)
            by_origin.setdefault(_lookup(origins, key, source), []).append(key)
        raise ConfigError("; ".join(
            f"{origin}: unknown key(s) {', '.join(keys)}" for origin, keys in by_origin.items()
        ) + f" (valid keys under {where}: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = _join(prefix, name)
        kwargs[name] = _convert(hints[name], value, _lookup(origins, key, source), key, origins)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (for saving next to a run)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _lookup(origins: dict[str, str], key: str, fallback: str) -> str:
    """The source that set `key` (list indices dropped); `fallback` for a key nobody set."""
    return origins.get(re.sub(r"\[\d+\]", "", key), fallback)


def merge_layer(into: dict[str, Any], layer: dict[str, Any], origins: dict[str, str], source: str,
                cls: type = Config, prefix: str = "") -> None:
    """Merge `layer` (a file's mapping, or an override as a nested mapping) into `into` by the module's rule:
    sections of `cls` merge key by key, every other value replaces the earlier one whole; `origins`
    records `source` for each value set (its dotted key)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name, value in layer.items():
        key = _join(prefix, str(name))
        section = hints.get(name) if name in fields and dataclasses.is_dataclass(hints.get(name)) else None
        if section is not None and (value is None or isinstance(value, dict)):
            # an empty section (`semi:` with nothing under it) changes nothing
            child = into.get(name)
            if not isinstance(child, dict):
                child = into[name] = {}
            merge_layer(child, value or {}, origins, source, section, key)
            continue
        into[name] = value
        for old in [k for k in origins if k.startswith(key + ".")]:  # a replaced value's old parts
            del origins[old]
        origins[key] = source


def _nested(cls: type, key: str, value: Any, item: str) -> dict[str, Any]:
    """An override `a.b.c=value` as the mapping {a: {b: {c: value}}}; the path must name sections up to
    its last part (an unknown name is left for `from_dict` to report with the override named)."""
    parts = key.split(".")
    node: Any = cls
    for i, part in enumerate(parts[:-1]):
        if node is None:
            break
        hints = typing.get_type_hints(node)
        if part in hints and not dataclasses.is_dataclass(hints[part]):
            whole = ".".join(parts[: i + 1])
            raise ConfigError(f"override {item!r}: '{whole}' is one value, not a section: give it whole, "
                              f"e.g. {whole}={{...}} (values replace, sections merge: pipeline/config/loading.py)")
        node = hints.get(part)
    out: Any = value
    for part in reversed(parts):
        out = {part: out}
    return out


def _convert(tp: Any, value: Any, source: str, key: str, origins: dict[str, str] | None = None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, source, key, origins)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, source, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{source}: '{key}': {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {type(value).__name__} {value!r}")
        return [_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(value).__name__} {value!r}")
        return {
            _convert(args[0], k, source, f"{key}.<key>"): _convert(args[1], v, source, f"{key}.{k}")
            for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            # YAML 1.1 reads `3e-4` (no dot) as a string; accept it as the number it is
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp in (int, str, bool):
        # bool is an int in Python; a YAML `true` for an int field is still a mistake
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{source}: '{key}' must be {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{source}: '{key}' has an unsupported type {tp}")


def _read_yaml_with_base(path: Path, seen: tuple[Path, ...], origins: dict[str, str]) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
    merged = {} if base is None else _read_yaml_with_base((path.parent / base), seen + (path.resolve(),), origins)
    merge_layer(merged, data, origins, str(path))
    return merged


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must have the form a.b.c=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from err
    return key, value
