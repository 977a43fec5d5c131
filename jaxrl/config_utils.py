"""Helpers for `configs/*.py`: string args in big_vision style (`configs/x.py:a=1,b=foo`), and
a flags parser that names an override of a field that does not exist."""
from __future__ import annotations

import sys

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
