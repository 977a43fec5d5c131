"""Train-state checkpoints with orbax, and a guard that turns SIGTERM into a clean save.

The train state is one pytree (ARCHITECTURE.md, invariant 3): `flax.struct` dataclasses,
dicts, optax states (namedtuples), `jax.Array`s of any dtype, NumPy arrays and scalars, and
Python ints, floats and bools. Orbax 0.12 saves it with `StandardSave` by key path (dataclass
field names, dict keys, namedtuple fields); the restored tree takes its structure, container
classes and static (`pytree_node=False`) fields from the abstract state given to `restore`,
so those fields are never read from disk. Each leaf comes back as what the abstract leaf is:

- `jax.Array` or `jax.ShapeDtypeStruct` -> `jax.Array` with that shape, dtype and sharding
  (a different dtype is cast on read; a struct without `.sharding` falls back to the sharding
  recorded at save time, which only works on the same topology);
- NumPy array -> NumPy array; NumPy scalar (`np.int64(7)`) -> NumPy scalar of that type;
- Python int / float / bool -> the same Python type.

PRNG keys may be stored either as `jax.random.key_data` (uint32) or as typed keys: orbax
writes a typed key as its uint32 key data and wraps it again on restore with the impl of the
abstract leaf's dtype. Orbax does not check that impl (asking for an `rbg` key from a saved
threefry key silently returns a threefry key), so `restore` checks every array leaf's shape
and dtype against the abstract state and raises on any difference.

Saving is asynchronous: `save` returns once the arrays are copied to host memory, so the
next (donating) train step may start at once; the write to disk continues in a thread and
`wait()` / `close()` block until it is committed.

Layout: `workdir/checkpoints/<step>/{state, metadata}`, where `metadata` is a JSON dict
(config, data-source description, ...) written beside each state.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
from types import FrameType
from typing import Any, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

_STATE = "state"
_METADATA = "metadata"

PyTree = Any


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """`config.checkpoint`: save every `every` steps (and at the end and on preemption),
    keeping the newest `max_to_keep`."""

    every: int
    max_to_keep: int

    def __post_init__(self):
        for name in ("every", "max_to_keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.checkpoint.{name} must be >= 1, got "
                                 f"{getattr(self, name)}")


class Checkpointer:
    """Saves and restores the train state under `workdir/checkpoints`.

    Args:
      workdir: run directory; checkpoints go to `workdir/checkpoints`.
      max_to_keep: keep only the newest this many checkpoints (None: keep all).
      save_interval_steps: `save(step, ...)` writes only when `step` is a multiple of this,
        unless `force=True`.
      async_save: write to disk in a background thread (see the module docstring).

    All processes of a multi-host run must make the same calls, in the same order.
    """

    def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int | None = 3,
                 save_interval_steps: int = 1, async_save: bool = True):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None (keep all); got {max_to_keep}")
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1; got {save_interval_steps}")
        workdir = os.fspath(workdir)
        if "://" not in workdir:  # leave gs:// and other remote paths to epath
            workdir = os.path.abspath(workdir)
        self.directory = epath.Path(workdir) / "checkpoints"
        # Orbax's default policy also saves whatever step comes first into an empty directory;
        # spelling the policy out keeps saves at multiples of the interval (and preemptions).
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_decision_policy=policies.AnySavePolicy([
                policies.FixedIntervalPolicy(save_interval_steps),
                policies.PreemptionCheckpointingPolicy(),
            ]),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=(_STATE, _METADATA))

    def save(self, step: int, state: PyTree, *, metadata: dict[str, Any] | None = None,
             force: bool = False) -> bool:
        """Saves `state` (and the JSON-able `metadata`, default `{}`) as checkpoint `step`.

        Without `force`, saves only at multiples of `save_interval_steps` (or when JAX's
        multi-host preemption service says so). A step that is already saved is skipped
        rather than rewritten, so a preemption save right after a periodic one is harmless.
        Returns whether a checkpoint was started.
        """
        step = int(step)
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(state),
            _METADATA: ocp.args.JsonSave({} if metadata is None else metadata),
        })
        return bool(self._manager.save(step, args=args, force=force))

    def latest_step(self) -> int | None:
        """The newest saved step, or None when there is no checkpoint."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def restore(self, abstract_state: PyTree, step: int | None = None) -> PyTree:
        """Restores checkpoint `step` (default: the latest) onto `abstract_state`.

        `abstract_state` has the structure of the saved state; its leaves are arrays or
        `jax.ShapeDtypeStruct`s (give them `.sharding` to place the result) or scalars, as
        described in the module docstring. A live state works too (its values are unused),
        as does `jax.eval_shape(init_fn)` with shardings attached.
        """
        step = self._existing_step(step)
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
        target = treedef.unflatten(_restore_target(path, leaf) for path, leaf in paths_leaves)
        self._manager.wait_until_finished()
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target)}))[_STATE]
        restored_leaves = treedef.flatten_up_to(restored)
        return treedef.unflatten(
            _as_abstract(path, leaf, got)
            for (path, leaf), got in zip(paths_leaves, restored_leaves))

    def restore_metadata(self, step: int | None = None) -> dict[str, Any]:
        """The metadata dict saved with checkpoint `step` (default: the latest)."""
        step = self._existing_step(step)
        self._manager.wait_until_finished()
        return self._manager.restore(
            step, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()}))[_METADATA]

    def wait(self) -> None:
        """Blocks until every started save is committed to disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's threads."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _existing_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
            return steps[-1]
        if int(step) not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; saved steps: {steps}")
        return int(step)


def _restore_target(path, leaf: Any) -> Any:
    """The leaf orbax's StandardRestore is given for one abstract leaf."""
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    if isinstance(leaf, np.generic):  # orbax accepts 0-d arrays, not NumPy scalars
        return np.asarray(leaf)
    if isinstance(leaf, (jax.ShapeDtypeStruct, np.ndarray, int, float)):
        return leaf
    raise TypeError(f"abstract state leaf {jax.tree_util.keystr(path)} has type "
                    f"{type(leaf).__name__}; expected a jax.Array, jax.ShapeDtypeStruct, "
                    "NumPy array or scalar, or Python int/float/bool")


def _as_abstract(path, leaf: Any, got: Any) -> Any:
    """Checks one restored leaf against its abstract leaf and gives it the leaf's type."""
    if isinstance(leaf, np.generic):
        got = np.asarray(got)[()]
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        if tuple(got.shape) != tuple(leaf.shape) or got.dtype != leaf.dtype:
            raise ValueError(
                f"checkpoint leaf {jax.tree_util.keystr(path)} restored as "
                f"{got.dtype}{list(got.shape)}, but the abstract state asks for "
                f"{leaf.dtype}{list(leaf.shape)} (a typed PRNG key of another impl?)")
    return got


class PreemptionGuard:
    """Records SIGTERM (and any other given signals) so the loop can save and exit cleanly.

    Use it around the training loop and poll it at step boundaries::

        with PreemptionGuard() as guard:
            for step in range(start, total):
                state = train_step(state, ...)
                if guard.reached(step + 1):
                    ckpt.save(step + 1, state, force=True)
                    break

    The first signal only sets a flag; a second one of the same kind goes to the handler
    that was there before (by default, SIGTERM kills and SIGINT raises KeyboardInterrupt),
    so a run that never reaches a step boundary can still be stopped. `close()` (or leaving
    the `with` block) puts the previous handlers back.

    Multi-host: every process must agree on the step at which to stop, or the save's
    collectives hang. When `jax.process_count() > 1`, `reached` all-gathers the flag across
    processes (`multihost_utils.process_allgather`) and also honours JAX's own preemption
    service (`multihost_utils.reached_preemption_sync_point`, active after
    `jax.distributed.initialize` where the platform announces preemptions), so every
    process must call `reached` at every step boundary. On one process it is a plain flag.

    Signal handlers can only be installed from the main thread.
    """

    def __init__(self, signals: Iterable[signal.Signals] = (signal.SIGTERM,)):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be created in the main thread "
                               "(Python delivers signals only there)")
        self.signals = tuple(signal.Signals(s) for s in signals)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        for sig in self.signals:
            previous = signal.signal(sig, self._handle)
            # None means a handler installed outside Python, which cannot be put back.
            self._previous[sig] = signal.SIG_DFL if previous is None else previous

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.received == sig:
            # Second time: the user (or the scheduler) insists; defer to the old handler.
            signal.signal(sig, self._previous.pop(sig))
            signal.raise_signal(sig)
            return
        self.received = sig

    def reached(self, step: int | None = None) -> bool:
        """True once a signal has been received (by any process, on multi-host)."""
        local = self.received is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils
        anywhere = bool(np.any(multihost_utils.process_allgather(np.int32(local))))
        if step is not None:
            try:
                anywhere |= bool(multihost_utils.reached_preemption_sync_point(int(step)))
            except RuntimeError:  # JAX's preemption service is not running
                pass
        return anywhere

    def close(self) -> None:
        """Restores the handlers that were installed before this guard."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> PreemptionGuard:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def install_preemption_handler(
        signals: Iterable[signal.Signals] = (signal.SIGTERM,)) -> PreemptionGuard:
    """Installs a `PreemptionGuard`; call `.reached(step)` at step boundaries, `.close()` at the end."""
    return PreemptionGuard(signals)


__all__ = ["Checkpointer", "PreemptionGuard", "install_preemption_handler"]
