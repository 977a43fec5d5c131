"""The main job on 2 local processes x 4 fake CPU devices (jax.distributed on 127.0.0.1)
equals it on one device (conftest.py's run, which test_sharded.py's meshes share); its
checkpoint (params FSDP-split over both processes) restores onto another mesh and onto one
device with the same values."""
import functools
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import ROOT, train_config
from das_job import PARAM_ATOL, das_config
from jaxrl import checkpoint, sharding
from jaxrl.jobs import train

ARG = "model=tiny,sft_steps=2,rl_steps=2,speculative=True"
FLAGS = ["--config.task.max_steps=1", "--config.task.train_pool=2", "--config.sft.batch_size=8",
         "--config.rl.num_prompts=2", "--config.rl.num_generations=4",
         "--config.rl.kl_coef=0.1", "--config.rl.mask_zero_signal=False",
         "--config.rollout.fit_cost_model=False", "--config.rollout.widths=(0,4)",
         "--config.rollout.compaction=False", "--config.eval.num_problems=2",
         "--config.eval.every=100", "--config.checkpoint.every=100",
         "--config.mesh.data=-1", "--config.mesh.fsdp=4"]


def config():
    """The ConfigDict that ARG and FLAGS give: das_job.py's job on their mesh."""
    return das_config({"data": -1, "fsdp": 4})


def launch(workdir, port: int):
    """The job on 2 processes x 4 devices; each process's stdout."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    cmd = [sys.executable, "-m", "jaxrl.main", f"--config=configs/grpo.py:{ARG}",
           f"--workdir={workdir}", *FLAGS,
           f"--config.distributed.coordinator_address=127.0.0.1:{port}",
           "--config.distributed.num_processes=2"]
    procs = [subprocess.Popen(cmd + [f"--config.distributed.process_id={i}"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    return [out for out, _ in outs]


def step_rows(workdir):
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "step_time_s"}
            for r in rows]


def restored_params(workdir, mesh, devices=None):
    """The run's last checkpoint restored onto `mesh` over `devices` (default all 8)."""
    c = config()
    c.mesh.update(mesh)
    cfg = train_config(c)
    state = train.build(cfg, sharding.make_mesh(cfg.mesh, devices)).state
    with checkpoint.Checkpointer(workdir) as ckpt:
        return ckpt.latest_step(), ckpt.restore(state).params


def test_two_processes_equal_one_and_their_checkpoint_restores_anywhere(tmp_path, one_device):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = launch(tmp_path / "two", port)
    # Process 0 alone logs: the summary table is printed once.
    assert "held-out accuracy at step 4" in two[0] and "held-out accuracy" not in two[1]

    # The reference: the same job on one device, which test_sharded.py compares every mesh
    # with (das_job.py derives the bounds below for exactly that comparison).
    rows_1, reference, _ = one_device
    rows_2 = step_rows(tmp_path / "two")
    assert [r["step"] for r in rows_2] == [r["step"] for r in rows_1] == [0, 1, 2, 2, 3, 4, 4]
    for a, b in zip(rows_1, rows_2):
        exact = {k: v for k, v in a.items() if not isinstance(v, float)}
        assert exact == {k: b[k] for k in exact}  # the same tokens, drafts and acceptances
        for k in set(a) - set(exact):  # sums in another order: das_job.py's bounds
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k

    # Saved with params split over fsdp=4 across both processes; restored on (data=8) and on
    # one device: the same values, placed as asked.
    step, on_data = restored_params(tmp_path / "two", {"data": 8, "fsdp": 1})
    step_1, on_one = restored_params(tmp_path / "two", {"data": 1, "fsdp": 1}, jax.devices()[:1])
    assert step == step_1 == 4
    q = on_data["layers_0"]["attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, None) and len(q.sharding.device_set) == 8
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(on_data), jax.device_get(on_one))
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=0, atol=PARAM_ATOL),
                 reference, jax.device_get(on_one))


def test_sigterm_to_one_process_stops_both_at_one_step_then_one_process_resumes(tmp_path):
    """SIGTERM reaches process 1 only; the step-boundary vote (PreemptionGuard.reached)
    stops both at the same step, both save it (orbax, collectively) and exit 0; the run then
    finishes on 1 process x 8 devices from that checkpoint."""
    import re
    import signal
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sft_only = ["--config.sft.batch_size=8", "--config.checkpoint.every=1000",
                "--config.eval.every=1000", "--config.eval.num_problems=8",
                "--config.task.max_steps=1"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    cmd = [sys.executable, "-m", "jaxrl.main", "--config=configs/grpo.py:model=tiny,sft_steps=40,rl_steps=0",
           f"--workdir={tmp_path}", *sft_only,
           f"--config.distributed.coordinator_address=127.0.0.1:{port}",
           "--config.distributed.num_processes=2"]
    procs = [subprocess.Popen(cmd + [f"--config.distributed.process_id={i}"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and '"sft_loss"' in metrics.read_text()):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    saved = [re.findall(r"saved step (\d+), exiting", err) for _, err in outs]
    assert saved[0] == saved[1] and len(saved[0]) == 1, saved
    step = int(saved[0][0])
    assert 1 <= step < 40
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == step

    one = subprocess.run(cmd[:-2], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert one.returncode == 0, one.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
             if "sft_loss" in line]
    assert steps == list(range(1, 41))
