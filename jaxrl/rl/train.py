"""The training job: SFT warm-up, then GRPO, on an embedded task.

Python owns only what is outside the jitted steps: making batches, evaluation, logging,
checkpoints and the loop. Steps `0 .. sft.steps-1` are SFT, the rest GRPO; the state's
step is the data position, so a run resumed from `workdir` continues exactly.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxrl import checkpoint, metrics as metrics_lib, sharding
from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params, param_axes
from jaxrl.rl import grpo, state as state_lib
from jaxrl.rl.rewards import TaskReward
from jaxrl.rl.sft import make_sft_step
from jaxrl.rollout.decode import generate
from jaxrl.rollout.sampling import SamplingParams
from jaxrl.tasks import batches, get_task
from jaxrl.tasks.base import TOKENIZER


def make_task(config):
    return get_task(config.task.name, config.task.difficulty, config.task.max_steps or None)


def max_new_tokens(config, task) -> int:
    return config.rl.max_new_tokens or batches.budgets(task)[1]


def learning_rate_schedule(config) -> optax.Schedule:
    """Linear warmup to the SFT rate for the SFT steps, then the RL rate."""
    warm = max(config.optim.warmup_steps, 1)
    sft = optax.join_schedules([optax.linear_schedule(0.0, config.sft.learning_rate, warm),
                                optax.constant_schedule(config.sft.learning_rate)], [warm])
    if config.sft.steps == 0:
        sft = optax.linear_schedule(0.0, config.rl.learning_rate, warm)
    return optax.join_schedules([sft, optax.constant_schedule(config.rl.learning_rate)],
                                [config.sft.steps or warm])


def build(config, mesh):
    """(model, task, initial state placed on the mesh, the jitted steps) from a config."""
    task = make_task(config)
    cfg = preset(config.model.preset, vocab_size=TOKENIZER.vocab_size, dtype=config.model.dtype,
                 param_dtype=config.model.param_dtype)
    model = Decoder(cfg)
    tx = state_lib.make_optimizer(config.optim, learning_rate_schedule(config))
    params = sharding.shard_params(init_params(cfg, jax.random.key(config.seed)),
                                   param_axes(cfg), mesh)
    state = sharding.replicate_rest(
        state_lib.create(params, tx, config.seed, with_reference=config.rl.kl_coef > 0), mesh)
    stop = tuple(TOKENIZER.eos_ids)
    steps = {"sft": make_sft_step(model),
             "rl": grpo.make_step(model, config.rl, TaskReward(task, config.rl.format_coef),
                                  max_new_tokens=max_new_tokens(config, task), stop_tokens=stop,
                                  pad_id=TOKENIZER.pad_id, split=config.rl.split_phases)}
    return model, task, state, steps


def evaluate(model, params, task, problems, config) -> float:
    """Greedy accuracy on held-out problems, by the task's JAX checker."""
    prompt_len, _ = batches.budgets(task)
    b = batches.encode(problems, prompt_len, batches.budgets(task)[1])
    n = len(problems)
    out = generate(model, params, jnp.asarray(b.prompts_PL), jnp.asarray(b.prompt_lengths_P),
                   jnp.arange(n, dtype=jnp.int32), jax.random.key(0),
                   SamplingParams.make(n, temperature=0.0), max_new_tokens=max_new_tokens(config, task),
                   stop_tokens=tuple(TOKENIZER.eos_ids), pad_id=TOKENIZER.pad_id)
    correct = jax.jit(jax.vmap(task.jax_check))(out.tokens_BN, out.lengths_B, jnp.asarray(b.targets_PT))
    return float(np.mean(np.asarray(correct)))


def run(config, workdir: str) -> dict:
    mesh = sharding.make_mesh(config.mesh)
    model, task, state, steps = build(config, mesh)
    ckpt = checkpoint.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep)
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(state)
        logging.info("resumed from %s at step %d", workdir, start)
    total = config.sft.steps + config.rl.steps
    writer = metrics_lib.MetricsWriter(workdir, start_step=start + 1)
    progress = metrics_lib.Progress(total, start_step=start, every=max(1, total // 50))
    preemption = checkpoint.install_preemption_handler()
    held_out = batches.held_out_problems(task, config.seed, config.eval.num_problems)
    prompt_len, solution_len = batches.budgets(task)
    accuracy = {}
    phase_time = {"rollout": 0.0, "reward": 0.0, "update": 0.0}
    rl_tokens, rl_seconds = 0, 0.0

    def eval_at(step):
        accuracy[step] = evaluate(model, state.params, task, held_out, config)
        writer.write(step, {"eval/accuracy": accuracy[step]})
        print(f"step {step}: held-out accuracy {accuracy[step]:.3f}", flush=True)

    if start == 0 or start == config.sft.steps:
        eval_at(start)
    step = start
    try:
        while step < total:
            in_sft = step < config.sft.steps
            n = config.sft.batch_size if in_sft else config.rl.num_prompts
            problems = batches.train_problems(task, config.seed, step, n)
            b = batches.encode(problems, prompt_len,
                               batches.bucket_len(problems, solution_len) if in_sft else solution_len)
            t0 = time.perf_counter()
            if in_sft:
                state, m = steps["sft"](state, b.prompts_PL, b.prompt_lengths_P, b.solutions_PN,
                                        b.solution_lengths_P)
            else:
                state, m = steps["rl"](state, b.prompts_PL, b.prompt_lengths_P, b.targets_PT)
            m = jax.device_get(m)
            seconds = time.perf_counter() - t0
            step += 1
            if not in_sft:
                rl_tokens += int(m["generated_tokens"])
                rl_seconds += seconds
                for k in phase_time:
                    phase_time[k] += float(m.get(f"time/{k}_s", 0.0))
            writer.write(step, {**m, "step_time_s": seconds, "phase": 0 if in_sft else 1})
            shown = {"loss": m["sft_loss"]} if in_sft else {"reward": m["reward"],
                                                            "acc": m["accuracy"]}
            progress.update(step, **shown)
            if step == config.sft.steps or step % config.eval.every == 0 or step == total:
                eval_at(step)
            if step % config.checkpoint.every == 0 or step == total or preemption.reached():
                ckpt.save(step, state)
            if preemption.reached():
                logging.warning("SIGTERM: saved step %d, exiting", step)
                break
    finally:
        ckpt.wait()
        writer.close()
        preemption.close()
    summary = {"steps": step, "accuracy": accuracy,
               "rl_tokens_per_s": rl_tokens / rl_seconds if rl_seconds else 0.0,
               "phase_seconds": phase_time}
    rows = [("held-out accuracy at step " + str(k), f"{v:.3f}") for k, v in sorted(accuracy.items())]
    rows += [("RL rollout tokens/s", f"{summary['rl_tokens_per_s']:.1f}")]
    if any(phase_time.values()):
        total_phase = sum(phase_time.values())
        rows += [(f"RL time in {k}", f"{v:.1f}s ({100 * v / total_phase:.0f}%)")
                 for k, v in phase_time.items()]
    print(metrics_lib.summary_table(rows))
    return summary


def _one_of(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r}; valid: {tuple(valid)}")


def _positive(config, *names: str) -> None:
    for name in names:
        node = config
        for part in name.split("."):
            node = node[part]
        if node < 1:
            raise ValueError(f"config.{name} must be >= 1, got {node}")


def validate(config) -> None:
    """Checks a train config before anything compiles; errors name the field and the valid
    values."""
    from jaxrl.models.config import PRESETS
    from jaxrl.rl.advantages import METHODS
    from jaxrl.rl.losses import AGG_MODES, KL_KINDS
    from jaxrl.rollout.sampling import SamplingParams
    from jaxrl.tasks import TASKS

    rl = config.rl
    _one_of("config.task.name", config.task.name, sorted(TASKS))
    make_task(config)  # checks difficulty and max_steps with their own messages
    _one_of("config.model.preset", config.model.preset, sorted(PRESETS))
    _one_of("config.model.dtype", config.model.dtype, ("float32", "bfloat16"))
    _one_of("config.model.param_dtype", config.model.param_dtype, ("float32", "bfloat16"))
    _one_of("config.rl.advantage", rl.advantage, METHODS)
    _one_of("config.rl.loss_agg", rl.loss_agg, AGG_MODES)
    _one_of("config.rl.kl_estimator", rl.kl_estimator, KL_KINDS)
    _one_of("config.rl.old_logprobs", rl.old_logprobs, ("sampler", "recompute"))
    _positive(config, "rl.num_prompts", "rl.num_generations", "rl.num_minibatches",
              "rl.num_epochs", "sft.batch_size", "eval.every", "eval.num_problems",
              "checkpoint.every", "checkpoint.max_to_keep")
    if config.sft.steps < 0 or rl.steps < 0 or config.sft.steps + rl.steps == 0:
        raise ValueError(f"config.sft.steps={config.sft.steps} and config.rl.steps={rl.steps} "
                         "must be >= 0 with at least one step in all")
    if rl.num_generations < 2:
        raise ValueError(f"config.rl.num_generations must be >= 2 for group advantages, "
                         f"got {rl.num_generations}")
    if (rl.num_prompts * rl.num_generations) % rl.num_minibatches:
        raise ValueError(f"config.rl.num_minibatches={rl.num_minibatches} must divide "
                         f"num_prompts * num_generations = {rl.num_prompts * rl.num_generations}")
    if rl.dual_clip and rl.dual_clip <= 1:
        raise ValueError(f"config.rl.dual_clip must be 0 (off) or > 1, got {rl.dual_clip}")
    if rl.max_new_tokens < 0:
        raise ValueError(f"config.rl.max_new_tokens must be >= 0 (0 = task budget), "
                         f"got {rl.max_new_tokens}")
    SamplingParams.make(1, rl.temperature, rl.top_k, rl.top_p)
    for name in ("sft.learning_rate", "rl.learning_rate"):
        part, leaf = name.split(".")
        if config[part][leaf] <= 0:
            raise ValueError(f"config.{name} must be > 0, got {config[part][leaf]}")
