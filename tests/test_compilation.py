"""The persistent compilation cache carries programs across processes, the compile clock
counts a program's first call and not a repeated one, and `Ahead` compiles a call's program
before it."""
import json
import os
import pathlib
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import pytest

from jaxrl import compilation

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A fresh process: sets the cache up as a job does, runs one jitted function, and reports the
# persistent-cache hits that JAX counted and the files in the cache.
PROCESS = """
import json, os, sys
import jax, jax.numpy as jnp
from jaxrl import compilation
hits = []
jax.monitoring.register_event_listener(
    lambda event, **_: hits.append(event) if event == compilation.CACHE_HIT_EVENT else None)
path = compilation.set_up_cache(compilation.CompileConfig(sys.argv[1], 0.0))
x = jnp.arange(12.0).reshape(3, 4)  # compiles nothing: a transfer
before = compilation.seconds()
y = jax.jit(lambda x: jnp.tanh(x) @ x.T)(x).block_until_ready()
print(json.dumps({"path": path, "hits": len(hits), "files": sorted(os.listdir(path)),
                  "compile_s": compilation.seconds() - before}))
"""


def run_process(cache_dir):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", PROCESS, str(cache_dir)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_what_the_first_compiled(tmp_path):
    cache = tmp_path / "xla"
    first = run_process(cache)
    assert first["path"] == str(cache)
    assert first["hits"] == 0 and first["files"]  # compiled, and wrote what it compiled
    second = run_process(cache)
    assert second["hits"] >= 1  # the jitted function came from disk
    assert second["files"] == first["files"]  # nothing new was compiled or written


def test_compile_seconds_count_first_calls_only():
    f = jax.jit(lambda x: jnp.cumsum(x * 3.0) - 1.0)
    x, x6 = jnp.ones((5,)), jnp.ones((6,))
    x1 = 2.0 * x  # the same aval as x (a strong float32 [5])
    before = compilation.seconds_by_stage()
    f(x).block_until_ready()
    after = compilation.seconds_by_stage()
    assert all(after[s] > before[s] for s in compilation.STAGES.values())
    before = compilation.seconds()
    f(x1).block_until_ready()  # same shapes: the in-memory jit cache, nothing compiled
    f(x).block_until_ready()
    assert compilation.seconds() == before
    f(x6).block_until_ready()  # a new shape compiles again
    assert compilation.seconds() > before


def test_ahead_compiles_on_a_daemon_thread_and_the_call_then_compiles_nothing():
    """`Ahead` lowers from the arrays' shapes, dtypes and shardings (taken at `start`, so the
    arrays may then be donated) and compiles on a daemon thread: a job that stops early does
    not wait for it. After `wait`, the call on the same arrays compiles nothing in this
    thread, and the ahead thread's compile seconds are counted apart."""
    f = jax.jit(lambda x, s: (x * s + 1.0).sum(), donate_argnums=0)
    x = jax.device_put(jnp.ones((7, 3)), jax.devices()[0])
    s = jax.device_put(jnp.float32(2.0), jax.devices()[0])
    ahead, gate = compilation.Ahead(), threading.Event()
    mine = compilation.seconds(this_thread=True)
    ahead.start("f", lambda *a: gate.wait(60) and f.lower(*a), x, s)  # held until checked
    (thread,) = [t for t in threading.enumerate() if t.name == "jaxrl-ahead-f"]
    assert thread.daemon
    gate.set()
    assert ahead.wait("f") >= 0 and ahead.seconds > 0
    assert compilation.seconds(this_thread=True) == mine  # its compile was not this thread's
    assert float(f(x, s)) == 63.0  # 21 entries of 1 * 2 + 1: exact in float32
    assert compilation.seconds(this_thread=True) == mine  # the call read what it compiled
    assert ahead.wait("f") == 0.0  # nothing left to wait for


def test_ahead_reraises_a_failed_compile_at_wait():
    def bad_lower(x):
        raise ValueError("no such program")

    ahead = compilation.Ahead()
    ahead.start("bad", bad_lower, jnp.ones(3))
    with pytest.raises(ValueError, match="no such program"):
        ahead.wait("bad")
