"""Train-state checkpoints with orbax, and a guard that turns SIGTERM or Ctrl-C into a clean save.

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

Resuming uses `restore_latest_valid`: a newest step that does not restore (a file truncated
by a full disk, an empty step directory left by a kill, a missing item) is skipped with a
one-line warning and the next older one is tried.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
from types import FrameType
from typing import Any, Callable, Iterable, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

_STATE = "state"
_METADATA = "metadata"

PyTree = Any
# Ctrl-C saves like a scheduler's SIGTERM: both are someone asking the run to stop.
DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Restored(NamedTuple):
    """What `Checkpointer.restore_latest_valid` found: the step, its state and metadata."""
    step: int
    state: PyTree
    metadata: dict[str, Any]


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
      cleanup_tmp: delete the temporary directories of saves cut short; only for the run
        that holds the workdir's lock (jaxrl/workdir.py).

    All processes of a multi-host run must make the same calls, in the same order.
    """

    def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int | None = 3,
                 save_interval_steps: int = 1, async_save: bool = True,
                 cleanup_tmp: bool = False):
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
            # A save cut short (SIGKILL) leaves a temporary directory, which orbax ignores
            # but keeps; only the run holding the workdir lock may delete them, as another
            # reader would delete a live run's save in progress.
            cleanup_tmp_directories=cleanup_tmp,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=(_STATE, _METADATA))
        # Steps that restore_latest_valid skipped: saving one of them again replaces it.
        self._unrestorable: set[int] = set()

    def save(self, step: int, state: PyTree, *, metadata: dict[str, Any] | None = None,
             force: bool = False) -> bool:
        """Saves `state` (and the JSON-able `metadata`, default `{}`) as checkpoint `step`.

        Without `force`, saves only at multiples of `save_interval_steps` (or when JAX's
        multi-host preemption service says so). A step that is already saved is skipped
        rather than rewritten, so a preemption save right after a periodic one is harmless.
        Returns whether a checkpoint was started. A step that `restore_latest_valid`
        skipped as unrestorable is deleted and written anew.
        """
        step = int(step)
        if step in self._unrestorable:
            self._manager.delete(step)
            self._unrestorable.discard(step)
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
        """Restores checkpoint `step` onto `abstract_state`; with no step, the newest one
        that restores (`restore_latest_valid(abstract_state).state`).

        `abstract_state` has the structure of the saved state; its leaves are arrays or
        `jax.ShapeDtypeStruct`s (give them `.sharding` to place the result) or scalars, as
        described in the module docstring. A live state works too (its values are unused),
        as does `jax.eval_shape(init_fn)` with shardings attached.
        """
        if step is None:
            return self.restore_latest_valid(abstract_state).state
        step = self._existing_step(step)
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
        target = _restore_target_tree(paths_leaves, treedef)
        self._manager.wait_until_finished()
        return self._check_leaves(paths_leaves, treedef, self._read_state(step, target))

    def restore_latest_valid(
            self, abstract_state: PyTree, *,
            check_metadata: Callable[[dict[str, Any]], None] | None = None) -> Restored:
        """The newest checkpoint whose metadata and state both restore, newest first.

        A step that fails to restore (a truncated file, an empty step directory, a missing
        item) is skipped with a warning naming the step and the reason, and the next older
        one is tried; saving that step again later replaces it. `check_metadata(metadata)`
        runs on each step's metadata before its state is read (the resume check): what it
        raises propagates, since a refused config is the user's to fix, not a corrupt step.
        A restored leaf of the wrong shape or dtype raises too (see `restore`).

        Raises FileNotFoundError when there is no checkpoint, and ValueError listing every
        step and why it failed when none restores. All processes must call it together.
        """
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self._manager.wait_until_finished()
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
        target = _restore_target_tree(paths_leaves, treedef)
        failures: list[tuple[int, str]] = []
        for step in reversed(steps):
            try:
                metadata = self._read_metadata(step)
            except Exception as e:  # noqa: BLE001  orbax and tensorstore raise many types
                self._skip(step, e, failures)
                continue
            if check_metadata is not None:
                check_metadata(metadata)
            try:
                raw = self._read_state(step, target)
            except Exception as e:  # noqa: BLE001
                self._skip(step, e, failures)
                continue
            self._unrestorable.update(s for s, _ in failures)
            return Restored(step, self._check_leaves(paths_leaves, treedef, raw), metadata)
        listing = "\n".join(f"  step {step}: {why}" for step, why in failures)
        raise ValueError(f"no checkpoint in {self.directory} restores:\n{listing}\n"
                         f"To start fresh, use a new --workdir or delete {self.directory}")

    def restore_metadata(self, step: int | None = None) -> dict[str, Any]:
        """The metadata dict saved with checkpoint `step` (default: the latest)."""
        step = self._existing_step(step)
        self._manager.wait_until_finished()
        return self._read_metadata(step)

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

    def _read_metadata(self, step: int) -> dict[str, Any]:
        return self._manager.restore(
            step, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()}))[_METADATA]

    def _read_state(self, step: int, target: PyTree) -> PyTree:
        return self._manager.restore(
            step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target)}))[_STATE]

    def _skip(self, step: int, error: Exception, failures: list[tuple[int, str]]) -> None:
        failures.append((step, _reason(error)))
        logging.warning("Checkpoint step %d in %s does not restore, skipped: %s",
                        step, self.directory, failures[-1][1])

    @staticmethod
    def _check_leaves(paths_leaves, treedef, restored: PyTree) -> PyTree:
        restored_leaves = treedef.flatten_up_to(restored)
        return treedef.unflatten(
            _as_abstract(path, leaf, got)
            for (path, leaf), got in zip(paths_leaves, restored_leaves))

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


def _reason(error: BaseException) -> str:
    """One line for a failed restore: the first line of the innermost cause, which is where
    orbax keeps what went wrong (tensorstore's OUT_OF_RANGE under a generic read error)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else '(no message)'}"


def _restore_target_tree(paths_leaves, treedef) -> PyTree:
    return treedef.unflatten(_restore_target(path, leaf) for path, leaf in paths_leaves)


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
    """Records SIGTERM and SIGINT (Ctrl-C), or the given signals, so the loop saves and exits.

    Use it around the training loop, and decide once per step boundary::

        with PreemptionGuard() as guard:
            for step in range(start, total):
                state = train_step(state, ...)
                stop = guard.reached(step + 1)  # exactly once per step, on every process
                if stop or (step + 1) % every == 0:
                    ckpt.save(step + 1, state, force=stop)
                if stop:
                    break

    The first signal only sets a flag; a second one of the same kind goes to the handler
    that was there before (by default, SIGTERM kills and SIGINT raises KeyboardInterrupt),
    so a second Ctrl-C stops a run at once, even one that never reaches a step boundary.
    `close()` (or leaving the `with` block) puts the previous handlers back.

    `reached(step)` is the one decision per step boundary: call it exactly once there and
    keep the answer. On multi-host it is a collective (it all-gathers the flag across
    processes, `multihost_utils.process_allgather`) and it feeds `step` to JAX's own
    preemption service (`multihost_utils.reached_preemption_sync_point`, active after
    `jax.distributed.initialize` where the platform announces preemptions), which must see
    every step once, in order, on every process; calling it twice per step or skipping a
    step makes processes disagree on where to stop, and the save's collectives hang.

    Signal handlers can only be installed from the main thread.
    """

    def __init__(self, signals: Iterable[signal.Signals] = DEFAULT_SIGNALS):
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

    def reached(self, step: int) -> bool:
        """Whether to save and stop at the boundary before `step`: a signal was received
        here (or, on multi-host, by any process), or JAX's preemption service says so."""
        from jax.experimental import multihost_utils
        stop = self.received is not None
        if jax.process_count() > 1:
            stop = bool(np.any(multihost_utils.process_allgather(np.int32(stop))))
        try:  # False without jax.distributed; every process must see every step
            stop |= bool(multihost_utils.reached_preemption_sync_point(int(step)))
        except RuntimeError:  # distributed, but JAX's preemption service is off
            pass
        return stop

    def close(self) -> None:
        """Restores the handlers that were installed before this guard."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> PreemptionGuard:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


__all__ = ["Checkpointer", "PreemptionGuard", "Restored"]
