"""Map YAML files and `a.b.c=value` overrides onto the typed `Config` tree.

Every error names the file and the dotted key, and is raised at load time: an unknown key,
a value of the wrong type, a missing file. A YAML file may start from another with
`base: other.yaml` (resolved relative to the file); keys then override the base's.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pipeline.config import Config

_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A config file or override that does not fit the `Config` tree."""


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Build a `Config` from an optional YAML file and `a.b.c=value` overrides."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        raw = _read_yaml_with_base(Path(path), seen=())
        source = str(path)
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return from_dict(Config, raw, source=source)


def from_dict(cls: type, data: dict[str, Any], source: str = "<dict>", prefix: str = "") -> Any:
    """Recursively build dataclass `cls` from `data`, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix or '<root>'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = prefix or "<root>"
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(_join(prefix, k) for k in unknown)} "
            f"(valid keys under {where}: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, source, _join(prefix, name))
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (for saving next to a run)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, source, key)
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


def _read_yaml_with_base(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
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
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
    merged = _read_yaml_with_base((path.parent / base), seen + (path.resolve(),))
    _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = v


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


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value
