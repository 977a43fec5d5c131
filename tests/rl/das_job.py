"""The job the mesh tests compare with its one-device run: 2 SFT + 2 GRPO steps of the
tiny policy with DAS rollouts, on a mesh of this process's 8 fake CPU devices
(test_sharded.py) or on 2 processes (test_multihost.py), and the bounds of the comparison."""
import json
import pathlib

import jax

from configs import config_dict, train_config
from jaxrl import checkpoint, sharding
from jaxrl.jobs import train


def das_config(mesh):
    """2 SFT + 2 GRPO steps of the tiny policy with DAS rollouts on a pool of 2 prompts (the
    second RL step drafts from the first's history)."""
    c = config_dict("grpo", "model=tiny,sft_steps=2,rl_steps=2")
    c.task.max_steps, c.task.train_pool = 1, 2
    c.sft.batch_size = 8
    c.rl.num_prompts, c.rl.num_generations = 2, 4
    c.rollout.speculative = True
    c.rollout.fit_cost_model = False  # timed: runs would differ
    c.rollout.widths, c.rollout.compaction = (0, 4), False
    c.eval.num_problems, c.eval.every, c.checkpoint.every = 2, 100, 100
    # No group has a reward signal this early; a KL penalty to the pre-SFT reference gives
    # the RL updates a gradient (and puts the reference policy on the mesh too).
    c.rl.kl_coef, c.rl.mask_zero_signal = 0.1, False
    c.mesh.update(mesh)
    return c


def run_on(config, workdir, monkeypatch, devices=None):
    """The job in `workdir` on `devices` (default all 8); its per-step metrics and final
    params, and the shardings of the SFT steps' batches."""
    make_mesh, seen, build = sharding.make_mesh, [], train.build
    monkeypatch.setattr(sharding, "make_mesh", lambda shape: make_mesh(shape, devices))

    def recording_build(*args, **kwargs):
        built = build(*args, **kwargs)
        sft = built.steps["sft"]

        def step(state, *batch):
            seen.append([x.sharding for x in batch])
            return sft(state, *batch)
        return built._replace(steps={**built.steps, "sft": step})

    monkeypatch.setattr(train, "build", recording_build)
    cfg = train_config(config)
    train.run(cfg, str(workdir))
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if not k.startswith("time/") and k != "step_time_s"}
            for r in rows]
    state = build(cfg, make_mesh(cfg.mesh, devices)).state
    with checkpoint.Checkpointer(workdir) as ckpt:
        params = jax.device_get(ckpt.restore(state).params)
    monkeypatch.undo()
    return rows, params, seen


# Float metrics and params of the two runs differ only by the order of float32 sums: the
# batch's loss and gradient sums are split over 8 devices (and, with tensor=2, the
# contractions over heads and MLP columns), each order within (n - 1) * 2^-24 of the exact
# sum relative to the sum of magnitudes, n <= 8 rows * 16 tokens * 64 hidden units, so
# <= 1e-2 * 2^-24 * ... about 1e-5 relative per metric over 6 updates: rtol 1e-4, and atol
# 1e-6 for metrics that are themselves rounding noise (sampler_trainer_logprob_gap ~1e-7).
# A param moves by at most its learning rate per Adam update (|m_hat / sqrt(v_hat)| <= 1
# for b1 = 0.9, b2 = 0.99 since (1 - b1) <= sqrt(1 - b2)); a gradient entry near 0 may flip
# sign with the order, so two runs' params differ by at most 2 * sum of the step sizes:
# SFT updates at lr 0 and 3e-3 / 20 (warmup), then 2 RL steps x 2 minibatches at 1e-4.
PARAM_ATOL = 2 * (0.0 + 3e-3 / 20 + 4 * 1e-4)
