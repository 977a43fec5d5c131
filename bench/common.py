"""What the benchmarks share: one timer, one HBM bandwidth probe, one JSON writer, a run's
metadata (command, date, device, versions), the training job's config and its SFT steps.

Run every benchmark from the repository root as a module, `python -m bench.NAME`.

    times_s = time_calls(fn, reps=20, warmup=3, inputs=[(x,), (y,)])   # wall s per call
    us = device_us(chain(step), args)       # device time of one call, dispatch cancelled
    hbm = hbm_bandwidth(gib)                # {"read_gbps", "copy_gbps", "gbps", ...}
    prof = profile(run, trace_dir)          # wall, busy, kernels and kernel groups of run()
    write_json(path, report)                # atomic: a killed run keeps the last whole file
    info = run_info("rollout", argv)        # command, date, host, device, versions
    cfg = train_config("task=sort", {"rl.learning_rate": 1e-5})   # configs/grpo.py + overrides
    for step, batch, state, metrics, seconds in sft_steps(built, n, batch_size): ...

jax is imported inside the functions: `bench.decode`'s HF child process imports this module
and must not load JAX next to torch.
"""
from __future__ import annotations

import collections
import datetime
import glob
import gzip
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import shlex
import statistics
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
GRPO_CONFIG = ROOT / "configs" / "grpo.py"


def csv(kind, allow_empty: bool = False):
    """An argparse `type`: comma-separated values of `kind` ("1,16,64" -> [1, 16, 64]); ''
    is refused unless `allow_empty` (then it is [])."""
    import argparse

    def parse(text: str) -> list:
        try:
            values = [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected comma-separated {kind.__name__}s") from None
        if not values and not allow_empty:
            raise argparse.ArgumentTypeError(f"{text!r}: expected at least one value")
        return values
    return parse


# ---- timing ----

def time_calls(fn, reps: int, warmup: int = 1, inputs=((),)) -> list[float]:
    """Wall seconds of each of `reps` calls `fn(*inputs[i % len(inputs)])`, each waited for
    with `block_until_ready`, after `warmup` untimed calls (the first compiles). Cycling
    over several `inputs` keeps repeated calls from finding their operands in the L2 cache.
    Each time includes the host's dispatch and synchronisation of the call (~50 us on the
    GPU machines); `device_us` cancels it."""
    import jax

    for i in range(warmup):
        jax.block_until_ready(fn(*inputs[i % len(inputs)]))
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*inputs[i % len(inputs)]))
        times.append(time.perf_counter() - t0)
    return times


def chain(step):
    """`make_chain` for `device_us`: `make_chain(n)` jits n dependent calls of
    `step(carry, i, *rest) -> carry`, called as `(carry, *rest)`."""
    import jax

    def make(num_calls):
        def run(carry, *rest):
            for i in range(num_calls):
                carry = step(carry, i, *rest)
            return carry
        return jax.jit(run)
    return make


def device_us(make_chain, args, samples: int = 21, max_calls: int = 8) -> float:
    """Device microseconds of one call: a jitted chain of n dependent calls minus a chain of
    one, over n - 1 (each the median of `samples` runs after two warm-up runs), so that the
    cost of dispatching and synchronising a launch cancels out. n is chosen so that the
    chain takes about 2 ms, at least 2 and at most `max_calls`."""
    median = lambda fn: statistics.median(time_calls(fn, samples, 2, (args,)))  # noqa: E731
    t1 = median(make_chain(1))
    n = int(min(max(round(2e-3 / t1), 2), max_calls))
    return 1e6 * (median(make_chain(n)) - t1) / (n - 1)


def hbm_bandwidth(gib: float) -> dict:
    """The device's memory bandwidth in GB/s over `gib` GiB of bf16, by `device_us`: a read
    (a max over the array) and a copy (`x + 1`, bytes read plus written). `gbps`, the larger,
    is the denominator of every "% of HBM" and roofline in bench/ (decode reads nearly only;
    the larger figure gives the stricter floor)."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(1), (max(int(gib * 2**30) // 2 // 4096, 1), 4096),
                          jnp.bfloat16)
    # `max(x + m)` with the last max reads all of x at each step and cannot be hoisted.
    read_us = device_us(chain(lambda m, i, x: jnp.max(x + m)), (jnp.zeros((), x.dtype), x))
    # The barrier keeps XLA from fusing the steps into one pass.
    copy_us = device_us(chain(lambda y, i: jax.lax.optimization_barrier(y + 1)), (x,))
    res = {"array_bytes": x.nbytes, "read_gbps": x.nbytes / read_us / 1e3,
           "copy_gbps": 2 * x.nbytes / copy_us / 1e3,
           "method": "device_us (chain of n calls minus a chain of one, medians of 21)"}
    res["gbps"] = max(res["read_gbps"], res["copy_gbps"])
    return res


def probe_gib(arg: float | None) -> float:
    """The probe's size: `arg`, else 4 GiB on an accelerator and 1/16 GiB on CPU (a smoke run)."""
    import jax

    if arg is not None:
        return arg
    return 1 / 16 if jax.default_backend() == "cpu" else 4.0


# ---- profiling ----

def _trace(trace_dir: str) -> tuple[list[dict], dict, dict]:
    """The newest Perfetto trace under `trace_dir`: (events, {pid: process name},
    {(pid, tid): thread name})."""
    path = max(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                         recursive=True), key=os.path.getmtime)
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    procs, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            procs[e["pid"]] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
    return events, procs, threads


def kernel_events(trace_dir: str) -> list[dict]:
    """The complete events of the device's stream rows in the newest Perfetto trace under
    `trace_dir` (on CPU, where there is no device row, the host's XLA op rows)."""
    events, procs, threads = _trace(trace_dir)
    device = {p for p, n in procs.items() if "/device:GPU" in n or "/device:TPU" in n}

    def keep(e):
        thread = threads.get((e["pid"], e["tid"]), "")
        if device:  # kernels as they ran: the stream rows, not the derived op/module rows
            return e["pid"] in device and "stream" in thread.lower()
        return "XLAEigen" in thread
    return [e for e in events if e.get("ph") == "X" and keep(e)]


def host_spans(trace_dir: str, top: int) -> list[list]:
    """The `top` host spans of the newest trace under `trace_dir` by total seconds, as
    [name, seconds, count, threads]: XLA's own annotations (compiler passes, autotuning,
    codegen), not Python frames (named '$file:line'). Spans nest, so totals overlap."""
    events, procs, threads = _trace(trace_dir)
    device = {p for p, n in procs.items() if "/device:" in n}
    spans = collections.defaultdict(lambda: [0.0, 0, set()])
    for e in events:
        if e.get("ph") == "X" and e["pid"] not in device and not e["name"].startswith("$"):
            span = spans[group_name(e["name"])]
            span[0] += e["dur"] / 1e6
            span[1] += 1
            span[2].add(threads.get((e["pid"], e["tid"]), e["tid"]))
    ranked = sorted(spans.items(), key=lambda kv: -kv[1][0])[:top]
    return [[name, total, count, len(tids)] for name, (total, count, tids) in ranked]


def group_name(name: str) -> str:
    """A kernel's group: its name without the numeric suffixes XLA adds per instance."""
    return re.sub(r"(_\d+)+$", "", re.sub(r"\.\d+", "", name))


def profile(run, trace_dir: str) -> dict:
    """`run()` timed (the best of 3 wall times after a compile call) and then run once under
    `jax.profiler.trace`: wall ms, kernel-busy ms, kernel count and {group: [ms, calls]}."""
    import jax

    wall = min(time_calls(run, reps=3, warmup=1))  # the first call compiles
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        jax.block_until_ready(run())
    events = kernel_events(trace_dir)
    groups = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        g = groups[group_name(e["name"])]
        g[0] += e["dur"] / 1e3  # us -> ms
        g[1] += 1
    return {"wall_ms": wall * 1e3, "busy_ms": sum(e["dur"] for e in events) / 1e3,
            "kernels": len(events), "groups": dict(groups)}


# ---- reports ----

def write_json(path: str, report: dict) -> None:
    """Writes `report` to `path` through a temporary file, so that a run killed mid-write
    leaves the previous whole file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)


def version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(*extra: str) -> dict:
    """Python's and the JAX stack's versions, and those of the `extra` packages."""
    return {"python": platform.python_version(),
            **{pkg: version(pkg) for pkg in ("jax", "jaxlib", "flax", "optax", *extra)}}


def run_info(name: str, argv: list[str], *extra_versions: str) -> dict:
    """What every report starts with: the command as run, the UTC date, host, device and
    versions."""
    import jax

    dev = jax.devices()[0]
    return {"command": f"python -m bench.{name} {shlex.join(argv)}".strip(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "device": {"kind": dev.device_kind, "platform": dev.platform,
                       "count": jax.device_count()},
            "versions": versions(*extra_versions)}


def peak_memory_gib() -> float | None:
    """The most device memory this process has held (JAX keeps one peak per process);
    None where the device does not say (CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None


def heading(info: dict) -> str:
    """The line above a table: device, date and command."""
    return f"{info['device']['kind']}, {info['date'][:10]}, `{info['command']}`"


# ---- the training job's config and SFT steps ----

def train_config(arg: str | None, overrides: dict):
    """`configs/grpo.py:<arg>` with `overrides` ({"rl.learning_rate": 1e-5, ...}) set,
    built into the training job's TrainConfig (which checks every field). Needs
    ml-collections (see the calling script's docstring)."""
    from jaxrl.config_utils import build, load_config_file, unknown_override_message
    from jaxrl.jobs.train import TrainConfig

    config = load_config_file(str(GRPO_CONFIG), arg)
    for key, value in overrides.items():
        missing = unknown_override_message(config, f"config.{key}")
        if missing:
            raise ValueError(f"bench override: {missing}")
        *parents, field = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[field] = value
    return build(TrainConfig, config)


def sft_steps(built, num_steps: int, batch_size: int, bucketed: bool = True):
    """Runs the training job's SFT step (`built.steps["sft"]`) on the embedded task's SFT
    batches of steps 0 .. num_steps - 1 (tasks/batches.py), yielding `(step, batch, state,
    metrics, seconds)` after each: the state after it, its metrics on the host and its
    wall time (the metrics' fetch included). Solutions pad to the job's length bucket
    (`batches.bucket_len`, as `sft_batch` does), or to the task's budget (bucketed=False:
    one compile). The step donates the state: use the yielded one."""
    import jax

    from jaxrl.tasks import batches

    source, state = built.source, built.state
    for step in range(num_steps):
        problems = batches.train_problems(source.task, source.seed, step, batch_size)
        n_sol = (batches.bucket_len(problems, source.solution_len) if bucketed
                 else source.solution_len)
        b = batches.encode(problems, source.prompt_len, n_sol)
        t0 = time.perf_counter()
        state, m = built.steps["sft"](state, b.prompts_PL, b.prompt_lengths_P, b.solutions_PN,
                                      b.solution_lengths_P)
        m = jax.device_get(m)
        yield step + 1, b, state, m, time.perf_counter() - t0
