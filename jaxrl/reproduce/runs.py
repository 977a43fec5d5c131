"""The jobs a table needs, run as `python -m jaxrl.main` processes, and their outputs read.

Each run gets its own workdir `OUT/runs/NAME` with its log (`log.txt`). A run that finished
leaves `reproduce_done.json` holding its command line: running the table again skips it
while the command is the same, and a run that was interrupted resumes from its checkpoints
(the train job's own resume), so an interrupted reproduction loses at most the steps since
each run's last checkpoint. Runs start in order as their dependencies finish, at most
`parallel` at a time (on one GPU, small policies leave it mostly idle: several processes
share it, each given its share of the memory).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from jaxrl.config_utils import configs_dir

DONE = "reproduce_done.json"
DETERMINISTIC = "--xla_gpu_deterministic_ops=true"
LOG = "log.txt"


@dataclasses.dataclass(frozen=True)
class Run:
    """One job: `config` is `FILE.py:ARGS` in configs/, `overrides` the `--config.KEY=VALUE`
    flags, `after` the runs that must finish first (an evaluation after its training)."""

    name: str
    config: str
    overrides: tuple[tuple[str, object], ...] = ()
    after: tuple[str, ...] = ()

    def workdir(self, out: pathlib.Path) -> pathlib.Path:
        return workdir(out, self.name)

    def command(self, out: pathlib.Path) -> list[str]:
        flags = [f"--config.{k}={_flag(v)}" for k, v in self.overrides]
        return [sys.executable, "-m", "jaxrl.main", f"--config={configs_dir() / self.config}",
                *flags, f"--workdir={self.workdir(out)}"]


def workdir(out: pathlib.Path, name: str) -> pathlib.Path:
    """Where run `name` of a table in `out` keeps its outputs."""
    return out / "runs" / name


def eval_every(setting: dict) -> int:
    """Held-out accuracy at the start, after SFT and at the end only: the train job counts
    SFT steps too, and evaluating every few of them cost more than training did (GPU runs
    of 2026-12-01)."""
    return setting["sft_steps"] + setting["rl_steps"]


def _flag(value) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _recorded(run: Run, out: pathlib.Path) -> list[str]:
    """The command as `reproduce_done.json` records it (without the interpreter's path)."""
    return [str(x) for x in run.command(out)[1:]]


def _finished(run: Run, out: pathlib.Path) -> bool:
    done = run.workdir(out) / DONE
    return done.is_file() and json.loads(done.read_text()).get("command") == _recorded(run, out)


def execute(runs: list[Run], out: pathlib.Path, parallel: int, log=print) -> None:
    """Runs every run not yet finished, dependencies first, `parallel` at a time; a failed
    run stops the others (they resume next time) and raises naming it and its log."""
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate run names: {names}")
    todo = [r for r in runs if not _finished(r, out)]
    for r in runs:
        if r not in todo:
            log(f"  {r.name}: finished earlier (its {DONE}), skipped")
    finished = {r.name for r in runs if r not in todo}
    env = dict(os.environ)
    # Runs that share a seed must share their SFT warm-up and data bit for bit, so that the
    # tables compare only what differs: on a GPU that takes deterministic reductions and
    # scatters (measured 2026-12-01 on an H200 without it: two runs of one config left SFT
    # equal for 2 steps, not for 50).
    env["XLA_FLAGS"] = " ".join(filter(None, (env.get("XLA_FLAGS", ""), DETERMINISTIC)))
    if parallel > 1:  # each process preallocates this share of an accelerator's memory
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / parallel:.2f}")
    live: dict[str, tuple[subprocess.Popen, float, Run]] = {}
    total, count = len(todo), 0
    try:
        while todo or live:
            for r in [r for r in todo if set(r.after) <= finished][:parallel - len(live)]:
                todo.remove(r)
                count += 1
                wd = r.workdir(out)
                wd.mkdir(parents=True, exist_ok=True)
                with open(wd / LOG, "ab") as f:
                    # Its own session: a Ctrl-C reaches only this process, which stops the
                    # runs itself (below), so a run that exits 0 has finished.
                    proc = subprocess.Popen(r.command(out), stdout=f, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
                live[r.name] = (proc, time.perf_counter(), r)
                log(f"  [{count}/{total}] {r.name}: started (log {wd / LOG})")
            if not live and todo:
                raise ValueError(f"runs wait on runs that do not exist: "
                                 f"{[(r.name, r.after) for r in todo]}")
            time.sleep(0.5)
            for name, (proc, t0, r) in list(live.items()):
                if proc.poll() is None:
                    continue
                del live[name]
                if proc.returncode:
                    tail = (r.workdir(out) / LOG).read_text(errors="replace").splitlines()[-15:]
                    raise SystemExit(f"run {name} failed (exit {proc.returncode}); the end of "
                                     f"{r.workdir(out) / LOG}:\n" + "\n".join(tail))
                (r.workdir(out) / DONE).write_text(json.dumps(
                    {"command": _recorded(r, out),
                     "seconds": time.perf_counter() - t0}))
                finished.add(name)
                log(f"  {name}: finished in {time.perf_counter() - t0:.0f} s")
    finally:  # interrupted or failed: the train job saves a checkpoint on SIGTERM
        for proc, _, _ in live.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in live.values():
            proc.wait()


def metrics(workdir: pathlib.Path) -> tuple[list[dict], list[dict]]:
    """A train run's (RL step records, evaluation records) from its metrics.jsonl."""
    rl, evals = [], []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "eval/accuracy" in record:
            evals.append(record)
        elif record.get("phase") == 1:
            rl.append(record)
    return rl, evals


def v1_infer(workdir: pathlib.Path) -> dict:
    """A v1_infer run's v1_infer.json."""
    return json.loads((workdir / "v1_infer.json").read_text())


def device_kind() -> str:
    """The accelerator the runs use, asked of a child process (this one stays off the
    device, so that the runs get all of its memory)."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    probe = "import jax; d = jax.devices(); print(f'{len(d)} x {d[0].device_kind}')"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    return done.stdout.strip() or "unknown"
