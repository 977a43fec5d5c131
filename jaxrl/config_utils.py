"""Configs: string args for `configs/*.py` (big_vision style) and the typed configs built
from them.

The ml-collections files in `configs/` are the only place defaults live. A job turns its
ConfigDict into frozen dataclasses once (`build`), by field name: a key the dataclass does
not have, or a field the ConfigDict lacks, is an error naming it. Each dataclass checks its
own values in `__post_init__`, naming the field (`config.rl.num_prompts must be >= 1, got 0`),
so a bad value fails before anything compiles. The dataclasses are frozen and hashable:
jitted functions take them as static arguments. `parse_flags` names an override of a
field that does not exist.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
import sys
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


def configs_dir() -> pathlib.Path:
    """The repo's configs/ (installed editable, as the README installs)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "configs"
    if not (path / "grpo.py").is_file():
        raise SystemExit(f"no configs/grpo.py at {path}: run from a checkout of the repo "
                         "installed with `pip install -e .`")
    return path


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


def unknown_override_message(config: ml_collections.ConfigDict, flag: str,
                             flag_name: str = "config") -> str | None:
    """For an override flag such as `--config.rl.foo=1`, the one line saying which part of
    its path does not exist and what its parent has, or None when the path exists (or
    indexes a list, `a[0]`, which is left to config_flags)."""
    path = flag.lstrip("-").partition("=")[0]
    if path.startswith(f"no{flag_name}."):  # absl's --noflag form of a bool
        path = path[2:]
    parts = path.split(".")
    if parts[0] != flag_name or any("[" in part for part in parts):
        return None
    node, prefix = config, flag_name
    for part in parts[1:]:
        if not isinstance(node, ml_collections.ConfigDict):
            return (f"{prefix}.{part} does not exist: {prefix} is the {type(node).__name__} "
                    f"{node!r:.40}, not a group of fields")
        if part not in node:
            return f"{prefix}.{part} does not exist; {prefix} has: {', '.join(sorted(node.keys()))}"
        node, prefix = node[part], f"{prefix}.{part}"
    return None


def parse_flags(argv: list[str], flag_name: str = "config") -> list[str]:
    """absl's flags parser, with one line instead of config_flags' traceback for an override
    of a field that does not exist (exit status 2).

    Use as `app.run(main, flags_parser=parse_flags)`.
    """
    from absl import app

    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError):  # what config_flags raises for a path it cannot find
        message = _unknown_override(argv, flag_name)
        if message is None:
            raise
        sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
        sys.exit(2)


def _unknown_override(argv: list[str], flag_name: str) -> str | None:
    """The first unknown override in argv, checked against the config file it names."""
    config_arg = None
    for i, arg in enumerate(argv):
        for form in (f"-{flag_name}", f"--{flag_name}"):
            if arg.startswith(f"{form}="):
                config_arg = arg[len(form) + 1:]
            elif arg == form and i + 1 < len(argv):
                config_arg = argv[i + 1]
    if config_arg is None:
        return None
    path, _, arg = config_arg.partition(":")
    config = load_config_file(path, arg or None)
    overrides = (a for a in argv if a.lstrip("-").startswith((f"{flag_name}.", f"no{flag_name}.")))
    return next(filter(None, (unknown_override_message(config, a, flag_name) for a in overrides)),
                None)
