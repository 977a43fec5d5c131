"""What a resume checks: the config saved beside a checkpoint against the one given now.

A checkpoint's metadata holds `{"config": flatten_config(config), "code_version":
code_version()}`. On resume, `resume_check` refuses any difference outside `safe_fields`
(fields that change neither the train state nor the data stream, such as step counts and
eval or logging cadence), naming each field with its saved and new value, and says which
safe fields changed.
"""
from __future__ import annotations

import importlib.metadata
import json
import pathlib
import subprocess
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

ABSENT = "<absent>"  # how a field missing on one side is shown


def flatten_config(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """`{"rl.kl_coef": 0.01, "model.path": "...", ...}`: one dotted key per leaf field.

    Values are what JSON gives back (tuples become lists, anything not JSON-able its
    `repr`), so a flattened config equals itself after a round trip through the metadata.
    An empty sub-dict is kept as the leaf `{}`.
    """
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    flat: dict[str, Any] = {}

    def visit(prefix: str, node: Mapping[str, Any]) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                visit(f"{name}.", value)
            else:
                flat[name] = json.loads(json.dumps(value, default=repr))

    visit("", config)
    return flat


def code_version() -> dict[str, Any]:
    """`{"version": jaxrl's installed version or None, "git_commit": HEAD of the checkout
    holding the package or None, "git_dirty": whether it has uncommitted changes or None}`."""
    try:
        version = importlib.metadata.version("jaxrl")
    except importlib.metadata.PackageNotFoundError:
        version = None
    package_dir = pathlib.Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True,
                                  text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"version": version, "git_commit": commit,
            "git_dirty": None if status is None else bool(status)}


def _is_safe(field: str, safe_fields: set[str]) -> bool:
    """A safe field covers itself and, as a prefix, every field under it ("eval": "eval.every")."""
    return any(field == safe or field.startswith(f"{safe}.") for safe in safe_fields)


def resume_check(saved: Mapping[str, Any], current: Mapping[str, Any], safe_fields: set[str],
                 *, checkpoint_dir: str) -> dict[str, tuple[Any, Any]]:
    """Refuses a resume whose config differs from the saved one outside `safe_fields`.

    `saved` and `current` are `flatten_config` dicts; a field present on one side only
    differs too. Raises ValueError naming every refused field with its saved and current
    value, and how to start fresh. Returns the safe fields that changed, as
    `{field: (saved, current)}`, and logs them as a warning. An empty `saved` (a checkpoint
    written before configs were saved with it) cannot be checked: that is logged and allowed.
    """
    if not saved:
        logging.warning("The checkpoint in %s has no saved config: resuming without "
                        "checking the config against it", checkpoint_dir)
        return {}
    changed = {field: (saved.get(field, ABSENT), current.get(field, ABSENT))
               for field in sorted(set(saved) | set(current))
               if saved.get(field, ABSENT) != current.get(field, ABSENT)}
    refused = {f: values for f, values in changed.items() if not _is_safe(f, safe_fields)}
    if refused:
        lines = "\n".join(f"  config.{f}: saved {old!r}, now {new!r}"
                          for f, (old, new) in refused.items())
        raise ValueError(
            f"cannot resume from {checkpoint_dir}: the config differs from the saved one in "
            f"{len(refused)} field(s) that change the train state or the data stream:\n"
            f"{lines}\nTo start fresh, use a new --workdir, or delete {checkpoint_dir}")
    if changed:  # all safe; a warning, as main runs at WARNING verbosity
        logging.warning("Resuming from %s with changed fields that are safe to change: %s",
                        checkpoint_dir, "; ".join(f"config.{f}: {old!r} -> {new!r}"
                                                  for f, (old, new) in changed.items()))
    return changed
