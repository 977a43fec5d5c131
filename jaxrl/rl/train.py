"""The training job: SFT warm-up, then GRPO, on an embedded task or on user math JSONL.

Python owns only what is outside the jitted steps: making batches, evaluation, logging,
checkpoints and the loop. Steps `0 .. sft.steps-1` are SFT, the rest GRPO; the state's
step is the data position, so a run resumed from `workdir` continues exactly.

A prompt source (`config.data.source`) supplies the batches of step `s`, the reward and
the held-out evaluation: `EmbeddedPrompts` (a random-init preset on the character
tokenizer, JAX checker in the jit) or `JsonlPrompts` (an HF checkpoint and its tokenizer,
`math_checker` on the host). With `model.path` set, a finished run also writes the policy
as an HF checkpoint to `workdir/hf`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxrl import checkpoint, metrics as metrics_lib, sharding
from jaxrl.models import hf
from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params, param_axes
from jaxrl.models.kv_cache import init_cache
from jaxrl.models.tokenizer import HFTokenizer
from jaxrl.rl import grpo, state as state_lib
from jaxrl.rl.rewards import HostReward, TaskReward
from jaxrl.rl.sft import make_sft_step
from jaxrl.rollout import drafter
from jaxrl.rollout import policy as length_policy
from jaxrl.rollout.decode import generate
from jaxrl.rollout.sampling import SamplingParams
from jaxrl.rollout.speculative import SpecConfig
from kernels.ragged_attention import IMPLS as ATTENTION_IMPLS
from jaxrl.tasks import batches, get_task, math_reward
from jaxrl.tasks.base import TOKENIZER

SOURCES = ("embedded", "jsonl")
# Copied from model.path next to the exported weights, where present: what a server needs
# besides them (generation_config.json keeps the checkpoint's sampling defaults and eos ids).
HF_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
                 "generation_config.json")


def make_task(config):
    return get_task(config.task.name, config.task.difficulty, config.task.max_steps or None)


def learning_rate_schedule(config) -> optax.Schedule:
    """Linear warmup to the SFT rate for the SFT steps, then the RL rate."""
    warm = max(config.optim.warmup_steps, 1)
    sft = optax.join_schedules([optax.linear_schedule(0.0, config.sft.learning_rate, warm),
                                optax.constant_schedule(config.sft.learning_rate)], [warm])
    if config.sft.steps == 0:
        sft = optax.linear_schedule(0.0, config.rl.learning_rate, warm)
    return optax.join_schedules([sft, optax.constant_schedule(config.rl.learning_rate)],
                                [config.sft.steps or warm])


def load_policy(config, tokenizer) -> tuple[Decoder, dict]:
    """The HF checkpoint at `model.path` (params in `param_dtype`, activations in `dtype`), or
    a random init of the preset over the tokenizer's vocab."""
    if config.model.path:
        model, params = hf.load(config.model.path, dtype=config.model.param_dtype)
        return Decoder(dataclasses.replace(model.cfg, dtype=config.model.dtype)), params
    cfg = preset(config.model.preset, vocab_size=config.model.vocab_size or tokenizer.vocab_size,
                 dtype=config.model.dtype, param_dtype=config.model.param_dtype)
    return Decoder(cfg), init_params(cfg, jax.random.key(config.seed))


def spec_config(config, model: Decoder, mesh, batch: int,
                workdir: str | None = None) -> SpecConfig | None:
    """`config.rollout` as a `SpecConfig` (None when speculation is off). With
    `rollout.fit_cost_model` the width cost model is timed on this device first, by
    process 0 for all processes (every process must compile the same widths' choice), and
    kept in `workdir/cost_model.json`, so that a resumed run chooses the widths the
    interrupted one did (the tokens would not change, but the sampler log-probs' last bits
    and the speculation metrics would)."""
    r = config.rollout
    if not r.speculative:
        return None
    spec = SpecConfig(widths=tuple(r.widths), max_match=r.max_match, spec_factor=r.spec_factor,
                      min_token_prob=r.min_token_prob, max_candidates=r.max_candidates,
                      length_aware=r.length_aware, class_budgets=tuple(r.class_budgets),
                      long_frac=r.long_frac, medium_frac=r.medium_frac,
                      compaction=r.compaction, min_bucket=r.min_bucket,
                      cost_base=r.cost_base, cost_per_token=r.cost_per_token,
                      verify_impl=r.verify_impl).validate()
    if not r.fit_cost_model:
        return spec
    path = os.path.join(workdir, "cost_model.json") if workdir else None
    if path and os.path.exists(path):
        with open(path) as f:
            fit = json.load(f)
        c_base, c_tok = fit["c_base_s"], fit["c_tok_s"]
        logging.info("verification cost model from %s", path)
    else:
        c_base, c_tok = length_policy.measure_cost_model(
            verification_timer(model, batch, mesh), (batch, max(batch // 8, 1)), spec.widths)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            c_base, c_tok = (float(c) for c in multihost_utils.broadcast_one_to_all(
                np.asarray([c_base, c_tok])))
        if path and jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            with open(path, "w") as f:
                json.dump({"device": jax.devices()[0].device_kind, "c_base_s": c_base,
                           "c_tok_s": c_tok}, f)
    logging.info("verification cost model on %s: %.3g s + %.3g s/token",
                 jax.devices()[0].device_kind, c_base, c_tok)
    return dataclasses.replace(spec, cost_base=c_base, cost_per_token=c_tok)


def verification_timer(model: Decoder, batch: int, mesh, context: int = 256):
    """`forward(rows, k)`: one cached forward of `k + 1` tokens on `rows` rows over a cache of
    `context` filled slots, blocking; random weights (only the time matters)."""
    params = sharding.shard_params(init_params(model.cfg, jax.random.key(0)),
                                   param_axes(model.cfg), mesh)

    @functools.partial(jax.jit, static_argnums=(1, 2))
    def step(params, rows, k):
        cache = init_cache(model.cfg, rows, context + k + 1)
        cache = cache.replace(lengths_B=jnp.full((rows,), context, jnp.int32))
        return model.apply({"params": params}, jnp.zeros((rows, k + 1), jnp.int32), cache=cache)[0]

    return lambda rows, k: jax.block_until_ready(step(params, rows, k))


def build(config, mesh, source=None, workdir: str | None = None):
    """(model, prompt source, initial state placed on the mesh, the jitted steps) from a
    config; `source` defaults to `make_source(config)`; `workdir` keeps the fitted
    verification cost model (`spec_config`)."""
    if source is None:
        source = make_source(config)
    model, params = load_policy(config, source.tokenizer)
    model = Decoder(model.cfg, attention_impl=config.rollout.attention_impl)
    tx = state_lib.make_optimizer(config.optim, learning_rate_schedule(config))
    params = sharding.shard_params(params, param_axes(model.cfg), mesh)
    rl = config.rl
    spec = spec_config(config, model, mesh, rl.num_prompts * rl.num_generations, workdir)
    history = None
    if spec is not None:
        slots = config.rollout.history_slots or min(source.num_prompts or 4096, 4096)
        history = drafter.init_history(slots, config.rollout.window, rl.num_generations,
                                       source.max_new_tokens)
    state = sharding.replicate_rest(
        state_lib.create(params, tx, config.seed, with_reference=rl.kl_coef > 0,
                         history=history), mesh)
    tok = source.tokenizer
    steps = {"sft": make_sft_step(model),
             "rl": grpo.make_step(model, rl, source.reward, max_new_tokens=source.max_new_tokens,
                                  stop_tokens=tuple(tok.eos_ids), pad_id=tok.pad_id,
                                  split=rl.split_phases, spec=spec)}
    return model, source, state, steps


# ---- Prompt sources: what the loop reads, how it is rewarded and evaluated ----

class EmbeddedPrompts:
    """An embedded task on the character tokenizer: the problems of step `s` come from
    `default_rng([seed, s])` (tasks/batches.py), with reference solutions for SFT, and the
    task's JAX checker scores rollouts inside the jitted step."""

    def __init__(self, config):
        self.task = make_task(config)
        self.tokenizer = TOKENIZER
        self.seed = config.seed
        self.prompt_len, self.solution_len = batches.budgets(self.task)
        self.max_new_tokens = config.rl.max_new_tokens or self.solution_len
        self.reward = TaskReward(self.task, config.rl.format_coef)
        self.held_out = batches.held_out_problems(self.task, config.seed, config.eval.num_problems)
        pool = config.task.train_pool
        self.pool = batches.train_pool(self.task, config.seed, pool) if pool else None
        self.num_prompts = pool or None  # distinct RL prompts (None: a fresh stream)
        self.info = {"task": self.task.name, "rl_prompt_pool": pool or "fresh every step"}

    def sft_batch(self, step: int, n: int) -> tuple:
        problems = batches.train_problems(self.task, self.seed, step, n)
        b = batches.encode(problems, self.prompt_len,
                           batches.bucket_len(problems, self.solution_len))
        return b.prompts_PL, b.prompt_lengths_P, b.solutions_PN, b.solution_lengths_P

    def rl_batch(self, step: int, n: int) -> tuple:
        """(prompts, lengths, targets, prompt ids): from the pool by epochs (ids are pool
        indices), or fresh problems (ids unique to the step, so never seen again)."""
        if self.pool is None:
            problems = batches.train_problems(self.task, self.seed, step, n)
            ids_P = step * n + np.arange(n)
        else:
            ids_P = batches.epoch_indices(self.seed, step, n, len(self.pool))
            problems = [self.pool[i] for i in ids_P]
        b = batches.encode(problems, self.prompt_len, self.solution_len)
        return b.prompts_PL, b.prompt_lengths_P, b.targets_PT, ids_P.astype(np.int32)

    def evaluate(self, model: Decoder, params, temperature: float = 0.0) -> float:
        """Accuracy on held-out problems (greedy, or sampled at `temperature`), by the task's
        JAX checker."""
        b = batches.encode(self.held_out, self.prompt_len, self.solution_len)
        out = _decode(model, params, b.prompts_PL, b.prompt_lengths_P, self.max_new_tokens,
                      self.tokenizer, temperature)
        correct = jax.jit(jax.vmap(self.task.jax_check))(out.tokens_BN, out.lengths_B,
                                                         jnp.asarray(b.targets_PT))
        return float(np.mean(np.asarray(correct)))


class JsonlPrompts:
    """User math problems from JSONL, prepared once as a TFDS dataset, on the checkpoint's
    tokenizer, scored on the host by `math_checker.check` against each row's final answer.

    Data position == step: step `s` reads the kept train rows at positions
    `s * P .. s * P + P - 1` of the endless sequence that visits every kept row once per
    epoch, in the order of `default_rng([seed, epoch]).permutation`. Rendered prompts over
    `data.max_prompt_len` tokens are skipped (counted); prompts are right-padded to the
    longest one kept, so every step has the same shapes.
    """

    def __init__(self, config, workdir: str, tokenizer: HFTokenizer):
        from jaxrl.tasks import tfds_builders as tb  # TFDS only where JSONL is read

        d = config.data
        self.tokenizer, self.template, self.seed = tokenizer, d.prompt_template, config.seed
        self.max_new_tokens = config.rl.max_new_tokens
        data_dir = d.data_dir or os.path.join(workdir, "data")
        builder = tb.prepare_jsonl(data_dir, d.manual_dir, d.name, d.on_error)
        name = f"jsonl_math/{d.name}"
        train = tb.load_source(name, data_dir, "train")
        # Tokenized once: the length filter needs every prompt, and steps reuse them.
        self.train_prompts = [self._encode(train[i]["prompt"]) for i in range(len(train))]
        self.train_answers = [train[i]["answer"] for i in range(len(train))]
        lengths = np.asarray([len(p) for p in self.train_prompts], np.int64)
        self.rows = np.flatnonzero(lengths <= d.max_prompt_len)  # the kept train indices
        too_long = len(lengths) - len(self.rows)
        if not len(self.rows):
            raise ValueError(f"no train prompt of {name} fits config.data.max_prompt_len="
                             f"{d.max_prompt_len} tokens")
        self.prompt_len = int(lengths[self.rows].max())
        self.num_prompts = len(self.train_prompts)  # prompt ids are indices into the split

        self.held_out_prompts, self.held_out_answers = [], []
        if "test" in builder.info.splits:  # the first eval.num_problems rows that fit
            test = tb.load_source(name, data_dir, "test")
            for i in range(len(test)):
                if len(self.held_out_prompts) == config.eval.num_problems:
                    break
                ids = self._encode(test[i]["prompt"])
                if len(ids) > d.max_prompt_len:
                    too_long += 1
                else:
                    self.held_out_prompts.append(ids)
                    self.held_out_answers.append(test[i]["answer"])
        else:
            logging.warning("%s has no test split: no held-out accuracy", name)
        if too_long:
            logging.warning("%s: skipped %d prompts longer than config.data.max_prompt_len=%d "
                            "tokens", name, too_long, d.max_prompt_len)
        self.reward = HostReward(math_reward.Scorer(), tokenizer, timeout_s=d.reward_timeout_s,
                                 format_fn=math_reward.has_boxed_answer,
                                 format_coef=config.rl.format_coef)
        self.info = {"dataset": name, "data_dir": data_dir, "train_rows": len(self.rows),
                     "held_out_rows": len(self.held_out_answers), "prompt_len": self.prompt_len,
                     "too_long_rows": too_long, "malformed_rows": len(builder.malformed)}

    def _encode(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(self.template.format(prompt=prompt))

    def row_indices(self, step: int, n: int) -> np.ndarray:
        """The train rows (indices into the split) of step `step`: see the class doc."""
        return self.rows[batches.epoch_indices(self.seed, step, n, len(self.rows))]

    def sft_batch(self, step: int, n: int) -> tuple:
        raise ValueError("JSONL math rows have no reference completions: set config.sft.steps=0")

    def rl_batch(self, step: int, n: int) -> tuple:
        rows = self.row_indices(step, n)
        # Every step pads to the same length: one compile.
        prompts_PL, lengths_P = batches.pad_rows([self.train_prompts[i] for i in rows],
                                                 self.prompt_len, self.tokenizer.pad_id)
        return prompts_PL, lengths_P, [self.train_answers[i] for i in rows], rows.astype(np.int32)

    def evaluate(self, model: Decoder, params, temperature: float = 0.0) -> float | None:
        """Accuracy on the held-out rows (greedy, or sampled at `temperature`), by the math
        checker (None without any)."""
        if not self.held_out_prompts:
            return None
        prompts_PL, lengths_P = batches.pad_rows(self.held_out_prompts,
                                                 max(map(len, self.held_out_prompts)),
                                                 self.tokenizer.pad_id)
        out = _decode(model, params, prompts_PL, lengths_P, self.max_new_tokens, self.tokenizer,
                      temperature)
        _, metrics = self.reward(out.tokens_BN, out.lengths_B, out.finished_B,
                                 self.held_out_answers)
        return metrics["accuracy"]


def make_source(config, workdir: str = ""):
    """The config's prompt source; a jsonl source prepares its dataset (once) under
    `data.data_dir`, or `workdir/data` when that is ''."""
    if config.data.source == "embedded":
        return EmbeddedPrompts(config)
    if not (config.data.data_dir or workdir):
        raise ValueError("the jsonl source needs config.data.data_dir or a workdir")
    return JsonlPrompts(config, workdir, HFTokenizer.from_dir(config.model.path))


def _decode(model, params, prompts_PL, lengths_P, max_new_tokens: int, tokenizer,
            temperature: float):
    """Held-out completions; sampled ones use a fixed key, so evaluations are comparable."""
    n = len(lengths_P)
    return generate(model, params, jnp.asarray(prompts_PL), jnp.asarray(lengths_P),
                    jnp.arange(n, dtype=jnp.int32), jax.random.key(0),
                    SamplingParams.make(n, temperature=temperature), max_new_tokens=max_new_tokens,
                    stop_tokens=tuple(tokenizer.eos_ids), pad_id=tokenizer.pad_id)


def export_hf(config, model: Decoder, params, tokenizer, out_dir: str) -> None:
    """Writes the policy as an HF checkpoint that transformers, vLLM and SGLang load, with
    model.path's tokenizer and generation files. `params` must be addressable here."""
    src, out = pathlib.Path(config.model.path), pathlib.Path(out_dir)
    bos_id = json.loads((src / hf.CONFIG_FILE).read_text()).get("bos_token_id")
    hf.save(out, model.cfg, jax.device_get(params), eos_ids=tokenizer.eos_ids, bos_id=bos_id)
    for name in HF_SIDE_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)


def run(config, workdir: str) -> dict:
    mesh = sharding.make_mesh(config.mesh)
    model, source, state, steps = build(config, mesh, make_source(config, workdir), workdir)
    logging.info("prompt source: %s", source.info)
    ckpt = checkpoint.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep)
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(state)
        logging.info("resumed from %s at step %d", workdir, start)
    total = config.sft.steps + config.rl.steps
    writer = metrics_lib.MetricsWriter(workdir, start_step=start + 1)
    progress = metrics_lib.Progress(total, start_step=start, every=max(1, total // 50))
    preemption = checkpoint.install_preemption_handler()
    accuracy, accuracy_sampled = {}, {}
    phase_time = {"rollout": 0.0, "reward": 0.0, "update": 0.0}
    rl_tokens, rl_seconds = 0, 0.0
    spec_totals = {"spec/drafted": 0, "spec/accepted": 0, "spec/passes": 0,
                   "spec/plain_passes": 0}

    def eval_at(step):
        acc = source.evaluate(model, state.params)
        if acc is None:
            return
        # Sampled at the rollout temperature: the pass@1 that the RL objective raises.
        accuracy[step] = acc
        accuracy_sampled[step] = source.evaluate(model, state.params, config.rl.temperature)
        writer.write(step, {"eval/accuracy": acc, "eval/accuracy_sampled": accuracy_sampled[step]})
        print(f"step {step}: held-out accuracy {acc:.3f} greedy, {accuracy_sampled[step]:.3f} "
              f"sampled at temperature {config.rl.temperature}", flush=True)

    if start == 0 or start == config.sft.steps:
        eval_at(start)
    step = start
    try:
        while step < total:
            in_sft = step < config.sft.steps
            n = config.sft.batch_size if in_sft else config.rl.num_prompts
            batch = source.sft_batch(step, n) if in_sft else source.rl_batch(step, n)
            t0 = time.perf_counter()
            state, m = steps["sft" if in_sft else "rl"](state, *batch)
            m = jax.device_get(m)
            seconds = time.perf_counter() - t0
            step += 1
            if not in_sft:
                rl_tokens += int(m["generated_tokens"])
                rl_seconds += seconds
                for k in phase_time:
                    phase_time[k] += float(m.get(f"time/{k}_s", 0.0))
                for k in spec_totals:
                    spec_totals[k] += int(m.get(k, 0))
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
    if config.model.path and step == total:
        export_hf(config, model, state.params, source.tokenizer, os.path.join(workdir, "hf"))
    summary = {"steps": step, "accuracy": accuracy, "accuracy_sampled": accuracy_sampled,
               "data": source.info,
               "rl_tokens_per_s": rl_tokens / rl_seconds if rl_seconds else 0.0,
               "rollout_tokens_per_s": (rl_tokens / phase_time["rollout"]
                                        if phase_time["rollout"] else 0.0),
               "phase_seconds": phase_time, **spec_totals}
    rows = [(f"data: {k}", v) for k, v in source.info.items()]
    rows += [(f"held-out accuracy at step {k} (greedy / sampled)",
              f"{v:.3f} / {accuracy_sampled[k]:.3f}") for k, v in sorted(accuracy.items())]
    rows += [("RL tokens/s (whole step)", f"{summary['rl_tokens_per_s']:.1f}")]
    if summary["rollout_tokens_per_s"]:
        rows += [("RL tokens/s (rollout phase)", f"{summary['rollout_tokens_per_s']:.1f}")]
    if spec_totals["spec/passes"]:
        d, a = spec_totals["spec/drafted"], spec_totals["spec/accepted"]
        rows += [("speculation: drafted / accepted tokens",
                  f"{d} / {a} ({100 * a / max(d, 1):.0f}%)"),
                 ("speculation: decode passes (plain decoding's steps)",
                  f"{spec_totals['spec/passes']} ({spec_totals['spec/plain_passes']})")]
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
    _one_of("config.data.source", config.data.source, SOURCES)
    if config.data.source == "embedded":
        _one_of("config.task.name", config.task.name, sorted(TASKS))
        make_task(config)  # checks difficulty and max_steps with their own messages
        _one_of("config.model.preset", config.model.preset, sorted(PRESETS))
        if config.model.path:
            raise ValueError(f"config.model.path={config.model.path!r} needs "
                             "config.data.source='jsonl'; the embedded tasks train a random-init "
                             "preset on the character tokenizer (set config.model.path='')")
    else:
        _validate_jsonl(config)
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
    if config.task.train_pool < 0:
        raise ValueError(f"config.task.train_pool must be >= 0 (0 = fresh problems), got "
                         f"{config.task.train_pool}")
    _one_of("config.rollout.attention_impl", config.rollout.attention_impl, ATTENTION_IMPLS)
    if config.rollout.speculative:
        _positive(config, "rollout.window")
        if config.rollout.history_slots < 0:
            raise ValueError(f"config.rollout.history_slots must be >= 0 (0 = all prompts), "
                             f"got {config.rollout.history_slots}")
    for name in ("sft.learning_rate", "rl.learning_rate"):
        part, leaf = name.split(".")
        if config[part][leaf] <= 0:
            raise ValueError(f"config.{name} must be > 0, got {config[part][leaf]}")


def _validate_jsonl(config) -> None:
    from etils import epath

    d, path = config.data, config.model.path
    if not path:
        raise ValueError("config.data.source='jsonl' needs config.model.path, an HF checkpoint "
                         "directory: a random-init model cannot read real text")
    for name in (hf.CONFIG_FILE, "tokenizer.json"):
        if not os.path.isfile(os.path.join(path, name)):
            raise ValueError(f"config.model.path={path!r} has no {name}")
    if not d.manual_dir or not (epath.Path(d.manual_dir) / "train.jsonl").exists():
        raise ValueError(f"config.data.manual_dir={d.manual_dir!r} has no train.jsonl")
    _one_of("config.data.on_error", d.on_error, ("skip", "raise"))
    if config.sft.steps:
        raise ValueError(f"config.sft.steps={config.sft.steps}, but JSONL math rows have only "
                         "final answers, no reference completions to imitate: set "
                         "config.sft.steps=0")
    if config.rl.max_new_tokens < 1:
        raise ValueError(f"config.rl.max_new_tokens must be >= 1 with config.data.source="
                         f"'jsonl' (there is no task budget), got {config.rl.max_new_tokens}")
    try:
        rendered = d.prompt_template.format(prompt="\0")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"config.data.prompt_template={d.prompt_template!r} is not a "
                         f"str.format template with only {{prompt}} ({e!r}); write a literal "
                         "brace as {{ or }}") from None
    if "\0" not in rendered:
        raise ValueError(f"config.data.prompt_template={d.prompt_template!r} has no {{prompt}}")
    _positive(config, "data.max_prompt_len")
    if not d.reward_timeout_s > 0:
        raise ValueError(f"config.data.reward_timeout_s must be > 0, got {d.reward_timeout_s}")
