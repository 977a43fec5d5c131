"""Compilation: the persistent cache that every job sets up once, and the seconds spent
compiling.

    compilation.set_up_cache(cfg.compile)  # first thing a job does
    before = compilation.seconds()
    ...  # a step
    compile_s = compilation.seconds() - before  # 0.0 when the step compiled nothing

The cache (JAX's persistent compilation cache, `jax_compilation_cache_dir`) keeps every
compiled program on disk keyed by its HLO, the devices, the flags and the JAX version, so a
second run, or a resumed one, reads what an earlier run compiled instead of compiling it.
The default directory is per user and shared by every run: the key already separates what
must differ. On a GPU it also keeps XLA's per-fusion autotuning results (JAX's default
`jax_persistent_cache_enable_xla_caches`).

`seconds()` adds up the durations that JAX reports through `jax.monitoring` for the three
stages of making an executable: tracing to a jaxpr, lowering to StableHLO, and the backend
compile (which is the persistent-cache read when the program is there). A call that hits
the in-memory jit cache reports none of them. The listener is registered when this module is
imported, so everything compiled after `import jaxrl.compilation` counts: by every thread,
or (`this_thread=True`) by the calling thread alone.

`Ahead` compiles programs on background threads before their first call (the job starts its
first RL step's while SFT trains): XLA's backend compile releases the GIL, and a program
lowered for the arguments' shapes, dtypes and shardings lands in the same in-memory caches
that the call then reads, so the call itself compiles nothing.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache

from jaxrl.config_utils import at_least

# The stage of each event (jax/_src/dispatch.py names them; they are top-level jits only,
# so a nested jit is not counted twice).
STAGES = {"/jax/core/compile/jaxpr_trace_duration": "trace",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
          "/jax/core/compile/backend_compile_duration": "backend"}
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

_lock = threading.Lock()
_seconds = dict.fromkeys(STAGES.values(), 0.0)
_thread = threading.local()  # .seconds: the same, for this thread's compiles


def _record(event: str, duration: float, **_) -> None:
    # JAX reports a stage's duration on the thread that ran it, once the stage is done.
    stage = STAGES.get(event)
    if stage is not None:
        with _lock:
            _seconds[stage] += duration
        if not hasattr(_thread, "seconds"):
            _thread.seconds = dict.fromkeys(STAGES.values(), 0.0)
        _thread.seconds[stage] += duration


jax.monitoring.register_event_duration_secs_listener(_record)


def seconds_by_stage(this_thread: bool = False) -> dict[str, float]:
    """Seconds this process (or the calling thread) spent in each stage since the import:
    take differences."""
    if this_thread:
        return dict(getattr(_thread, "seconds", dict.fromkeys(STAGES.values(), 0.0)))
    with _lock:
        return dict(_seconds)


def seconds(this_thread: bool = False) -> float:
    """Seconds this process (or the calling thread) spent tracing, lowering and compiling
    since the import."""
    return sum(seconds_by_stage(this_thread).values())


def abstract(tree):
    """`tree` with each `jax.Array` replaced by its `ShapeDtypeStruct` (shape, dtype,
    sharding, weak type): what lowering needs, and what a call on the arrays then finds
    compiled. Taken at once, so the arrays may be donated afterwards; other leaves stay."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=a.sharding, weak_type=a.weak_type)
        if isinstance(a, jax.Array) else a, tree)


class Ahead:
    """Programs compiled on background threads before their first call.

        ahead = Ahead()
        ahead.start("rl", step.lower, state, *batch)  # shapes taken now; compiles meanwhile
        ...  # other steps
        ahead.wait("rl")  # before the first call (seconds waited): it then compiles nothing
        state, m = step(state, *batch)

    `wait` re-raises a failed compile (the call would fail the same way). `seconds` is the
    compile time spent on these threads so far (`seconds(this_thread=True)` of the caller
    leaves it out). The threads are daemons: a job that stops early (SIGTERM during SFT)
    exits without waiting for a compile that nothing will call."""

    def __init__(self):
        self._jobs: dict = {}
        self.seconds = 0.0

    def start(self, key, lower, *args) -> None:
        """Starts `lower(*abstract(args)).compile()`; `lower` is a jitted function's `.lower`
        (or returns a `jax.stages.Lowered` as one does)."""
        spec, job = abstract(args), concurrent.futures.Future()

        def run():
            c0 = seconds(this_thread=True)
            try:
                compiled, error = lower(*spec).compile(), None
            except BaseException as e:  # re-raised by `wait`
                compiled, error = None, e
            with _lock:  # counted before the job is done, so that a waiter sees it
                self.seconds += seconds(this_thread=True) - c0
            if error is None:
                job.set_result(compiled)
            else:
                job.set_exception(error)
        threading.Thread(target=run, name=f"jaxrl-ahead-{key}", daemon=True).start()
        self._jobs[key] = job

    def wait(self, key) -> float:
        """Blocks until `key`'s compile is done; the seconds it waited (0.0 when none was
        started)."""
        job = self._jobs.pop(key, None)
        if job is None:
            return 0.0
        t0 = time.perf_counter()
        if not job.done():
            logging.info("waiting for the compile of %r, started ahead", key)
        job.result()
        return time.perf_counter() - t0


@dataclasses.dataclass(frozen=True)
class CompileConfig:
    """`config.compile` (configs/grpo.py explains each field)."""

    cache_dir: str
    min_compile_time_s: float

    def __post_init__(self):
        at_least("config.compile.min_compile_time_s", self.min_compile_time_s, 0)


def set_up_cache(cfg: CompileConfig) -> str:
    """Points JAX's persistent compilation cache at `cfg.cache_dir` (`~` expanded), or turns
    it off for ''; returns the directory used ('' = off). Called at the start of a job,
    before it compiles: a process reads the setting at its first compile, and this resets
    JAX's cache object when a job in the same process asks for another directory."""
    path = os.path.abspath(os.path.expanduser(cfg.cache_dir)) if cfg.cache_dir else ""
    current = jax.config.jax_compilation_cache_dir or ""
    jax.config.update("jax_enable_compilation_cache", bool(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", cfg.min_compile_time_s)
    if path != current:
        if path:
            os.makedirs(path, exist_ok=True)
        compilation_cache.set_cache_dir(path or None)
        compilation_cache.reset_cache()  # the next compile opens the new directory
    return path
