"""Hard kills: SIGKILL the training job at random points, restart it with the same command
each time, and compare with an uninterrupted run (ARCHITECTURE.md, invariant 3).

    python tests/kill_resume.py --kills 20 --out /tmp/kills   # the 20-kill run
    tests/test_kill_resume.py runs 2 kills in CI (one during a save)

A kill lands either at a random moment after a chosen step's metrics were written (the
step's checkpoint may or may not be committed yet), or while a checkpoint is being written
(orbax's temporary directory exists). At least one kill of each kind. The final params (the
last checkpoint) must equal the uninterrupted run's exactly, and `metrics.jsonl` must hold
each step and each evaluation exactly once, equal to the uninterrupted run's records but
for wall-clock times.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A tiny policy with DAS on (its drafter history is part of the checkpoint), a checkpoint
# every step and evaluations within the run.
FLAGS = ("--config.task.max_steps=1", "--config.sft.batch_size=8", "--config.rl.num_prompts=2",
         "--config.rl.num_generations=4", "--config.eval.num_problems=4",
         "--config.checkpoint.every=1", "--config.checkpoint.max_to_keep=3",
         "--config.rollout.fit_cost_model=False", "--config.rollout.widths=(0,4)",
         "--config.rollout.compaction=False", "--config.task.train_pool=2")


def command(workdir: pathlib.Path, sft_steps: int, rl_steps: int) -> list[str]:
    """The job in `workdir`, with a compilation cache beside it that the uninterrupted run
    and the killed one share: the first run to compile a program writes it, and the
    restarts read it, as a user's restarts read the default shared cache. JAX writes an
    entry in place, so a kill can leave it truncated; reading one fails to decompress, and
    JAX then compiles afresh with a warning (jax/_src/compiler.py), so no run reads a broken
    program."""
    return [sys.executable, "-m", "jaxrl.main",
            f"--config=configs/grpo.py:model=tiny,sft_steps={sft_steps},rl_steps={rl_steps},"
            "speculative=True", f"--config.eval.every={max((sft_steps + rl_steps) // 3, 1)}",
            *FLAGS, f"--config.compile.cache_dir={workdir.parent / 'compile_cache'}",
            f"--workdir={workdir}"]


def _env() -> dict:
    # One device: the fake-device flag of the test session would change nothing but speed.
    return {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}


def _saved_steps(workdir: pathlib.Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _saving(workdir: pathlib.Path) -> set[str]:
    """The checkpoints being written: orbax writes a step under a temporary name and renames
    it when committed (a kill may leave one behind)."""
    d = workdir / "checkpoints"
    return {p.name for p in d.iterdir() if "tmp" in p.name} if d.exists() else set()


def _max_metric_step(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return -1
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass  # a line being written
    return max(steps, default=-1)


def _wait(proc, ready, timeout_s: float) -> bool:
    """Polls `ready()` until it holds (True) or the process exits or time runs out (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            return True
        time.sleep(0.002)
    return False


def uninterrupted_run(workdir: pathlib.Path, sft_steps: int, rl_steps: int) -> None:
    subprocess.run(command(workdir, sft_steps, rl_steps), cwd=ROOT, env=_env(), check=True,
                   stdout=subprocess.DEVNULL)


def killed_run(workdir: pathlib.Path, sft_steps: int, rl_steps: int, kills: int, seed: int,
               timeout_s: float = 600.0, log=print) -> list[dict]:
    """Runs the job to completion in `workdir`, SIGKILLing it `kills` times on the way;
    returns what each kill hit."""
    rng = random.Random(seed)
    kinds = ["save", "step"] + [rng.choice(["save", "step"]) for _ in range(kills - 2)]
    rng.shuffle(kinds)
    total, hits = sft_steps + rl_steps, []
    cmd = command(workdir, sft_steps, rl_steps)
    launches = 0
    while True:
        launches += 1
        if launches > kills + 30:
            raise RuntimeError(f"no progress after {launches} launches: {hits}")
        saved = _saved_steps(workdir)
        start = saved[-1] if saved else 0
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        kind = kinds[len(hits)] if len(hits) < len(kinds) and start < total - 1 else None
        if kind == "save":
            stale = _saving(workdir)
            fired = _wait(proc, lambda: bool(_saving(workdir) - stale), timeout_s)
        elif kind == "step":
            # Some time into step `target` or later, once a checkpoint newer than `start`
            # is committed (saves are asynchronous: without that wait, a run whose steps
            # are fast could be killed before any save commits, again and again).
            target = min(start + rng.randint(1, 3), total - 1)
            fired = _wait(proc, lambda: (_max_metric_step(workdir) >= target
                                         and (_saved_steps(workdir) or [0])[-1] > start),
                          timeout_s)
            if fired:
                time.sleep(rng.uniform(0.0, 0.3))
        else:
            fired = False
        if fired and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            hit = {"kind": kind, "restarted_from": start, "metrics_at": _max_metric_step(workdir),
                   "saving": kind == "save"}
            hits.append(hit)
            log(f"kill {len(hits)}: {hit}")
            continue
        _, err = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"run from step {start} failed ({proc.returncode}):\n{err[-3000:]}")
        if len(hits) >= kills:
            return hits
        # It finished before the kills ran out: not enough steps for them.
        raise RuntimeError(f"the run finished after {len(hits)} of {kills} kills: use more steps")


def records(workdir: pathlib.Path) -> list[dict]:
    """metrics.jsonl without wall-clock measurements."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "step_time_s"}
            for r in rows]


def final_params(workdir: pathlib.Path, step: int):
    """The params of checkpoint `step`, as numpy, read with orbax without a model."""
    import numpy as np
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state",)) as mgr:
        restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return {k: np.asarray(v) for k, v in _flat(restored["state"]["params"]).items()}


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}/"))
        return out
    return {prefix: tree}


def compare(reference: pathlib.Path, killed: pathlib.Path, total: int) -> None:
    """Raises AssertionError unless the killed run left what the uninterrupted one did."""
    import numpy as np

    want, got = records(reference), records(killed)
    train_steps = [r["step"] for r in got if "eval/accuracy" not in r]
    eval_steps = [r["step"] for r in got if "eval/accuracy" in r]
    assert train_steps == list(range(1, total + 1)), train_steps
    assert len(eval_steps) == len(set(eval_steps)), eval_steps
    assert got == want, "metrics differ from the uninterrupted run"
    assert _saved_steps(killed)[-1] == _saved_steps(reference)[-1] == total
    a, b = final_params(reference, total), final_params(killed, total)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--sft-steps", type=int, default=12)
    parser.add_argument("--rl-steps", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/jaxrl_kill_resume")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    if out.exists():
        raise SystemExit(f"--out={out} exists: give a new directory")
    total = args.sft_steps + args.rl_steps
    t0 = time.time()
    uninterrupted_run(out / "reference", args.sft_steps, args.rl_steps)
    hits = killed_run(out / "killed", args.sft_steps, args.rl_steps, args.kills, args.seed)
    compare(out / "reference", out / "killed", total)
    during_save = sum(h["saving"] for h in hits)
    print(f"{len(hits)} SIGKILLs ({during_save} while a checkpoint was being written) over "
          f"{total} steps: final params and metrics.jsonl equal the uninterrupted run's, "
          f"each step once ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
