"""The one strict config loader: YAML mappings <-> typed dataclasses, used by every config section.

Each part owns its section next to its code (``ModelConfig``, ``DataConfig``, ``FIDConfig``, ``RuntimeConfig``,
``TrainConfig``, ``LogConfig``); the run config that composes them is :class:`biggan.training.config.Config`. This
module knows none of them: it reflects on dataclass fields, so a misspelt key or a value of the wrong type is one
:class:`ConfigError` naming the key path and what is allowed, instead of being silently swallowed (the incumbent's
``**kwargs`` problem).

Every section subclasses :class:`Section`, whose ``__post_init__`` checks the field ranges and then the section's own
``check``: a config object is checked once, when it is made, whether from YAML, from a checkpoint or in code.
Numeric fields declare their range with :func:`number` (a test holds every numeric field to having one); float fields
refuse NaN and infinity. YAML files are read with a loader that refuses a key written twice, and an empty file is an
error rather than silently "all defaults".

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``Optional[X]``, ``list[X]``,
``tuple[X, ...]`` / ``tuple[X, Y]`` and nested dataclasses (also inside lists).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

import yaml

from biggan.errors import ConfigError

__all__ = [
    "Section",
    "Range",
    "number",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "read_yaml",
    "dump_yaml",
]

T = TypeVar("T")
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
# The key path of the section being built by from_dict; a section made in code reports its ``where`` instead.
_BUILDING: ContextVar[str | None] = ContextVar("biggan_config_path", default=None)


# ---------------------------------------------------------------------------------------------------------------------
# Ranges and sections


@dataclass(frozen=True)
class Range:
    """The values a numeric field may take: ``low <= x`` (``low < x`` when ``low_open``), likewise ``high``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def number(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> Any:
    """A dataclass field for a number (or tuple of numbers, or None) with its allowed range, e.g. ``number(1, ge=1)``."""
    low, low_open = (gt, True) if gt is not None else (ge, False)
    high, high_open = (lt, True) if lt is not None else (le, False)
    return dataclasses.field(default=default, metadata={"range": Range(low, high, low_open, high_open)})


class Section:
    """Base of every config dataclass: when made, its field ranges and then its :meth:`check` rules are checked.

    ``where`` names the section in error messages when it is made in code; from YAML the loader's key path is used
    (e.g. ``model.G.attention[1]``).
    """

    where: ClassVar[str] = ""

    def __post_init__(self) -> None:
        building = _BUILDING.get()
        self.validate(self.where if building is None else building)

    def validate(self, where: str | None = None) -> None:
        """Check ranges, then :meth:`check`; ConfigError naming the key path (``where``, default :attr:`where`)."""
        where = self.where if where is None else where
        _check_ranges(self, where)
        self.check(where)

    def check(self, where: str) -> None:
        """Rules between this section's fields (ranges are checked already); raise ConfigError naming keys."""


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _check_ranges(obj: Any, where: str) -> None:
    for f in dataclasses.fields(obj):
        allowed = f.metadata.get("range")
        value = getattr(obj, f.name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{_key(where, f.name)} must be a finite number, got {item}")
            if allowed is not None and isinstance(item, (int, float)) and not isinstance(item, bool) \
                    and item not in allowed:
                raise ConfigError(f"{_key(where, f.name)} must be {allowed.describe()}, got {value}")


@contextlib.contextmanager
def _building(path: str) -> Iterator[None]:
    token = _BUILDING.set(path)
    try:
        yield
    finally:
        _BUILDING.reset(token)


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
    """Build dataclass ``cls`` from ``data`` over its defaults: strict keys and types, ranges, ``validate()``.

    A nested section given as a mapping is a delta over that field's default (which may differ from the class
    defaults); lists are replaced whole. ``path`` is the key path of ``data`` for error messages.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping ({cls.__name__}), got {data!r}")
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        where = f"{path}: " if path else ""
        raise ConfigError(
            f"{where}unknown key(s) {unknown} (unknown config key {_key(path, str(unknown[0]))!r}; "
            f"allowed keys{' in ' + path if path else ''}: {', '.join(types_)})"
        )
    defaults = cls()
    kwargs = {}
    for name, value in data.items():
        default = getattr(defaults, name)
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            value = _merge(to_dict(default), value)
        kwargs[name] = _convert(value, types_[name], _key(path, name))
    with _building(path):
        return cls(**kwargs)


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
            value = yaml.load(raw, Loader=_StrictLoader)
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


class _DuplicateKey(yaml.YAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping with the same key twice is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"key {key!r} is written twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one non-empty YAML mapping; one-line ConfigError for a missing, malformed or empty file, or a repeated key."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing YAML file, e.g. configs/demo.yaml")
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)
    except _DuplicateKey as err:
        raise ConfigError(f"config file {str(path)!r}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        raise ConfigError(f"config file {str(path)!r} is empty; list the settings that differ from the defaults "
                          "(e.g. copy configs/demo.yaml), or leave out --config")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def dump_yaml(obj: Any) -> str:
    """A config dataclass tree as YAML (field order kept), loadable by :func:`read_yaml` + :func:`from_dict`."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False, width=120)
