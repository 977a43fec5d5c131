"""Configs: string args for `configs/*.py` (big_vision style) and the typed configs built
from them.

The ml-collections files in `configs/` are the only place defaults live. A job turns its
ConfigDict into frozen dataclasses once (`build`), by field name: a key the dataclass does
not have, or a field the ConfigDict lacks, is an error naming it. Each dataclass checks its
own values in `__post_init__`, naming the field (`config.rl.num_prompts must be >= 1, got 0`),
so a bad value fails before anything compiles. The dataclasses are frozen and hashable:
jitted functions take them as static arguments.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
import types
import typing
from typing import Any, Iterable, Mapping

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses 'k=v,k2=v2' over `defaults`, casting each value to its default's type.

    An unknown key or a value of the wrong type fails, naming it and the valid keys.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"config arg {item!r} is not key=value")
        if key not in defaults:
            raise ValueError(f"unknown config arg {key!r}; valid: {sorted(defaults)}")
        kind = type(defaults[key])
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config arg {key}={value!r} is not a bool")
            out[key] = value.lower() in ("true", "1")
        else:
            try:
                out[key] = kind(value)
            except ValueError:
                raise ValueError(f"config arg {key}={value!r} is not a {kind.__name__}") from None
    return out


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, as `--config=path:arg` would give it."""
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem + "_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# ---- typed configs ----

def build(cls, node: Mapping[str, Any], path: str = "config"):
    """The frozen dataclass `cls` from a ConfigDict (or dict) section, field by field.

    Fields whose type is a dataclass are built from the sub-section of the same name.
    Values are checked against the field types (an int is accepted for a float, a list for
    a tuple); the dataclass's `__post_init__` then checks their ranges."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    keys = list(node.keys())
    unknown = sorted(set(keys) - set(names))
    if unknown:
        raise ValueError(f"{path} has no field {', '.join(unknown)}; {path} has: "
                         f"{', '.join(sorted(names))}")
    missing = [n for n in names if n not in keys]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)} (the config file must set every "
                         "field: defaults live only in configs/)")
    values = {}
    for name in names:
        kind, value = hints[name], node[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, Mapping) and not hasattr(value, "keys"):
                raise ValueError(f"{path}.{name} must be a section, got {value!r}")
            values[name] = build(kind, value, f"{path}.{name}")
        else:
            values[name] = _typed(value, kind, f"{path}.{name}")
    return cls(**values)


def _typed(value, kind, path: str):
    """`value` as `kind` (bool, int, float, str, tuple[X, ...], X | None), or a ValueError."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(value, inner, path)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ValueError(f"{path}={value!r} is not a tuple")
        item = args[0]
        return tuple(_typed(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is Any or (isinstance(kind, type) and isinstance(value, kind)
                       and not (kind is int and isinstance(value, bool))):
        return value
    raise ValueError(f"{path}={value!r} is a {type(value).__name__}, not a "
                     f"{getattr(kind, '__name__', kind)}")


def one_of(path: str, value, valid: Iterable) -> None:
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"{path}={value!r}; valid: {valid}")


def at_least(path: str, value, low) -> None:
    """`value >= low`, NaN rejected."""
    if not value >= low:
        raise ValueError(f"{path} must be >= {low}, got {value}")


def positive(path: str, value) -> None:
    """`value > 0` and finite (NaN and inf rejected)."""
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{path} must be a finite number > 0, got {value}")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A dataclass (or nested dict) as `{"rl.kl_coef": 0.0, ...}` of JSON-able leaves."""
    if dataclasses.is_dataclass(tree):
        tree = {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}
    if isinstance(tree, Mapping):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, tuple):
        tree = list(tree)
    return {prefix[:-1]: tree}
