"""Strict YAML configuration: dataclass schemas, presets by name, dotted overrides.

Every stage declares its configuration as (nested) dataclasses; :func:`load_config` reads
a YAML file or a preset name, applies ``key=value`` overrides and refuses unknown keys and
wrong types with one line naming the file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medalign.errors import ConfigError

T = TypeVar("T")

def _packaged_configs() -> Path:
    """The presets shipped inside the package (``medalign/configs``; the repository's top-level
    ``configs`` links to it), found the same way in a source checkout and in an installed wheel."""
    from importlib.resources import files

    return Path(str(files("medalign") / "configs"))


#: Folder holding ``configs/<stage>/<preset>.yaml``; ``MEDALIGN_CONFIG_DIR`` points elsewhere.
CONFIG_ROOT = Path(os.environ["MEDALIGN_CONFIG_DIR"]) if os.environ.get("MEDALIGN_CONFIG_DIR") else _packaged_configs()


def resolve_config_path(name_or_path: str | os.PathLike, stage: str) -> Path:
    """Return the YAML file for a path, or for a preset name under ``configs/<stage>/``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():  # a folder that happens to share a preset's name is not a config
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        return p
    preset = CONFIG_ROOT / stage / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    known = sorted(q.stem for q in (CONFIG_ROOT / stage).glob("*.yaml"))
    raise ConfigError(f"{name_or_path}: neither a YAML file nor a {stage} preset (known presets: {', '.join(known) or 'none'})")


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "command line") -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, returning a copy."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"{source}: override '{key}': '{part}' is not a section")
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` (dataclasses recursively), converting ints to floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        out = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where)
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) to plain dicts/lists, for saving beside outputs."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config_yaml(path: Path, stage: str, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping with its ``base:`` (a preset name or YAML path of the same stage)
    merged underneath, recursively: a preset that differs from another in a few keys says only those."""
    data = read_yaml(path)
    if "base" not in data:
        return data
    base = resolve_config_path(data.pop("base"), stage)
    if base.resolve() in _seen + (path.resolve(),):
        raise ConfigError(f"{path}: 'base' chain returns to {base.name}")
    return _deep_merge(read_config_yaml(base, stage, _seen + (path.resolve(),)), data)


def load_config(cls: type[T], name_or_path: str | os.PathLike, stage: str, overrides: list[str] | None = None) -> T:
    """Load preset or YAML file ``name_or_path`` for ``stage`` into dataclass ``cls`` (strict; a
    ``base:`` key inherits from another preset of the stage)."""
    path = resolve_config_path(name_or_path, stage)
    data = apply_overrides(read_config_yaml(path, stage), overrides or [])
    return from_dict(cls, data, where=str(path.name))


def save_yaml(obj: Any, path: str | os.PathLike) -> None:
    """Write a dataclass or mapping as YAML, atomically."""
    from medalign.io.atomic import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(obj), sort_keys=False))
