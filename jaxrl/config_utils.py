"""Helpers for `configs/*.py`: string args in big_vision style (`configs/x.py:a=1,b=foo`)."""
from __future__ import annotations

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
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem + "_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
