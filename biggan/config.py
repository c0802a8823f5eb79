"""The root run configuration and its strict YAML loader.

Each part owns its dataclass next to its code (``ModelConfig``, ``DataConfig``, ``FIDConfig``, ``RuntimeConfig``,
``TrainConfig``, ``LogConfig``); :class:`Config` composes them. YAML files hold only the deltas over the dataclass
defaults; ``key.sub=value`` command-line overrides are parsed as YAML scalars and checked against the field type.
The loader reflects on dataclass fields, so a misspelt key or a value of the wrong type is one :class:`ConfigError`
naming the key path and what is allowed, instead of being silently swallowed (the incumbent's ``**kwargs`` problem).

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``Optional[X]``, ``list[X]``,
``tuple[X, ...]`` / ``tuple[X, Y]`` and nested dataclasses (also inside lists).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from biggan.data.config import DataConfig
from biggan.errors import ConfigError
from biggan.fid.config import FIDConfig
from biggan.models.config import ModelConfig
from biggan.runtime import RuntimeConfig
from biggan.training.config import LogConfig, TrainConfig

__all__ = ["Config", "load_config", "from_dict", "to_dict", "apply_overrides", "dump_config"]

T = TypeVar("T")
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@dataclass
class Config:
    """Everything a run needs; resolved, it is written to the run directory and into every checkpoint."""

    name: str = "demo"  # run name: the run directory is <out_dir>/<name>
    seed: int = 0  # seeds weights, z, data order and SMYRF hashing (each rank derives its own streams)
    out_dir: str = "runs"  # parent of run directories
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    fid: FIDConfig = field(default_factory=FIDConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        """Top-level values; every nested section validates itself."""
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"name must be a plain directory name, got {self.name!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Reflection: dict -> dataclass


def _type_name(tp: Any) -> str:
    """Human-readable name of a field type for error messages."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))}]"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` (plain YAML data) against type ``tp`` and convert it; raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError:
                if len([a for a in args if a is not type(None)]) == 1:
                    raise
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 5e-5 (no dot) as a string; accept it for float fields
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise ConfigError(f"{path}: unsupported field type {tp!r} in the config dataclasses (a bug, not your config)")


def _field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's init fields (handles ``from __future__ import annotations``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` over its defaults; strict keys and types; calls ``validate()``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping ({cls.__name__}), got {data!r}")
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ConfigError(f"unknown config key {where!r}; allowed keys{' in ' + path if path else ''}: {', '.join(types_)}")
    defaults = _defaults(cls)
    kwargs = {}
    for name, value in data.items():
        default = getattr(defaults, name, None)
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            # A section in YAML is a delta over this field's default (which may differ from the class defaults).
            value = _merge(to_dict(default), value)
        kwargs[name] = _convert(value, types_[name], f"{path}.{name}" if path else name)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate) and _callable_without_args(validate):
        validate()  # sections whose validate() needs context (e.g. a key path) are validated by their parent
    return obj


def _callable_without_args(fn: Any) -> bool:
    """True if ``fn()`` is a valid call (every parameter has a default)."""
    params = inspect.signature(fn).parameters.values()
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def _defaults(cls: type) -> Any:
    """The all-defaults instance of ``cls`` (None if some field has no default)."""
    try:
        return cls()
    except TypeError:
        return None


def _merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge, everything else (lists included) is replaced by ``delta``."""
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain dicts/lists/scalars (tuples become lists), safe for YAML, JSON and ``weights_only``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------------------------------
# Overrides and files


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a plain config dict in place; values are YAML scalars (``1e-4``, ``[0, 1]``).

    List items are addressed by index (``model.G.attention.0.n_hashes=2``). Type checks happen when the dict is built.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({str(err).splitlines()[0]})") from None
        parts = key.split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: depth + 1]))
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, key)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:-1])} is a value, not a section")
    return data


def _index(node: list, part: str, path: str) -> int:
    """Parse a list index in an override path."""
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {path!r}: {part!r} is not an index of a list of length {len(node)}")
    return int(part)


def _child(node: Any, part: str, path: str) -> Any:
    """Walk one step of an override path, creating sections that are null (Optional dataclasses)."""
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"override path {path!r} goes through a value, not a section")
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping, with a one-line error for missing or malformed files."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing YAML file, e.g. configs/demo.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (deltas) <- ``key.sub=value`` overrides, checked strictly, then validated."""
    cfg = from_dict(Config, _read_yaml(Path(path)) if path is not None else {})
    if overrides:
        cfg = from_dict(Config, apply_overrides(to_dict(cfg), list(overrides)))
    return cfg


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (field order kept), loadable by :func:`load_config`."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, width=120)
