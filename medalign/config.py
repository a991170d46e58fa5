"""Strict YAML configuration: dataclass schemas, presets by name, dotted overrides.

Every stage declares its configuration as (nested) dataclasses; :func:`load_config` reads
a YAML file or a preset name, applies ``key=value`` overrides and refuses unknown keys and
wrong types with one line naming the file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medalign.errors import ConfigError, config_key

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


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) with YAML 1.2's floats: ``1e-3`` and ``5E-5`` are numbers
    (YAML 1.1 wants a dot and a signed exponent, ``1.0e-3``, and reads ``1e-3`` as a string)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))

#: a number as people write it in a string: ``3e-4``, ``1_000``, ``.5``, ``-2.``
_NUMBER = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$")


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 float rules (``1e-3`` is a number)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping (YAML 1.2 floats); errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "command line") -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML 1.2) to a nested dict, returning a copy."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw)
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


def _number(value: Any) -> float | int | None:
    """``value`` as a number when it is one or a string spelling one (``3e-4``, ``1_000``); else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip().replace("_", "")
        return int(text) if re.fullmatch(r"[-+]?[0-9]+", text) else float(text)
    return None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` (dataclasses recursively). Numbers are taken as people
    write them: ``3e-4`` or ``1_000`` in a string, an int for a float, a whole float (``1e4``) for an int."""
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
                errors.append(e)
        raise errors[0] if errors else ConfigError(f"{where}: invalid value {value!r}", key=where)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}", key=where)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}", key=where)
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}", key=where)
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        out = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}", key=where)
        return dict(value)
    if tp is float:
        number = _number(value)
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}", key=where)
        return float(number)
    if tp is int:
        number = _number(value)
        if number is None or (isinstance(number, float) and not number.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {value!r}", key=where)
        return int(number)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}", key=where)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}", key=where)
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}", key=where)
    return value


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Dataclass ``cls`` from ``data`` found at dotted key ``where`` (``""``: the top)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = config_key(where, str(unknown[0]))
        raise ConfigError(f"unknown key '{key}' ({where or 'the top level'} allows: {', '.join(fields)})", key=key)
    kwargs = {name: _coerce(value, hints[name], config_key(where, name)) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where + ': ' if where else ''}{e}", key=where or None) from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where)
    return obj


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data`` read from ``where`` (a file, for the message); unknown
    keys and wrong types raise :class:`ConfigError` naming ``where`` and the dotted key."""
    try:
        return _build(cls, data, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}", key=e.key) from None


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


def _leaf_keys(data: dict[str, Any], where: str = "") -> list[str]:
    """Every dotted key of a nested mapping, sections and leaves."""
    out = []
    for key, value in data.items():
        k = config_key(where, str(key))
        out.append(k)
        if isinstance(value, dict):
            out += _leaf_keys(value, k)
    return out


def read_config_yaml(path: Path, stage: str, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping with its ``base:`` (a preset name or YAML path of the same stage)
    merged underneath, recursively: a preset that differs from another in a few keys says only those."""
    return _read_chain(path, stage, _seen)[0]


def _read_chain(path: Path, stage: str, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """:func:`read_config_yaml` and, for every dotted key, the file of the chain that set it."""
    data = read_yaml(path)
    sources = {}
    if "base" in data:
        base = resolve_config_path(data.pop("base"), stage)
        if base.resolve() in _seen + (path.resolve(),):
            raise ConfigError(f"{path}: 'base' chain returns to {base.name}")
        below, sources = _read_chain(base, stage, _seen + (path.resolve(),))
        data_merged = _deep_merge(below, data)
    else:
        data_merged = data
    sources.update({k: path for k in _leaf_keys(data)})
    return data_merged, sources


def _shown(path: Path) -> str:
    """A config file as the user knows it: ``configs/<stage>/<preset>.yaml`` for a shipped preset."""
    try:
        return str(Path("configs") / Path(path).resolve().relative_to(CONFIG_ROOT.resolve()))
    except ValueError:
        return str(path)


def _override_of(key: str, overrides: list[str]) -> str | None:
    """The command-line override that set ``key`` (or a section above it), if one did."""
    for item in reversed(overrides):
        name = item.split("=", 1)[0].strip()
        if key == name or key.startswith(name + ".") or key.startswith(name + "["):
            return item
    return None


def load_config(cls: type[T], name_or_path: str | os.PathLike, stage: str, overrides: list[str] | None = None) -> T:
    """Load preset or YAML file ``name_or_path`` for ``stage`` into dataclass ``cls`` (strict; a
    ``base:`` key inherits from another preset of the stage). An error names the file that set the
    key at fault (``configs/pretrain/demo_ct.yaml: optim.lr: ...``) or the override (``command line:
    optim.lr=fast: ...``)."""
    path = resolve_config_path(name_or_path, stage)
    overrides = overrides or []
    data, sources = _read_chain(path, stage)
    data = apply_overrides(data, overrides)
    try:
        return _build(cls, data, "")
    except ConfigError as e:
        override = _override_of(e.key, overrides) if e.key else None
        if override is not None:
            raise ConfigError(f"command line: {override}: {str(e).removeprefix(e.key + ': ')}", key=e.key) from None
        owner = next((sources[k] for k in _prefixes(e.key) if k in sources), path) if e.key else path
        raise ConfigError(f"{_shown(owner)}: {e}", key=e.key) from None


def _prefixes(key: str) -> list[str]:
    """``a.b[0].c`` -> ``a.b[0].c``, ``a.b[0]``, ``a.b``, ``a``: the key and the sections above it, deepest first."""
    parts = re.split(r"(?=[.\[])", key)
    return ["".join(parts[:i]).lstrip(".") for i in range(len(parts), 0, -1)]


def save_yaml(obj: Any, path: str | os.PathLike) -> None:
    """Write a dataclass or mapping as YAML, atomically."""
    from medalign.io.atomic import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(obj), sort_keys=False))
