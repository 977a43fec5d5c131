"""The training job: SFT warm-up, then GRPO, on an embedded task or on user math JSONL.

Python owns only what is outside the jitted steps: making batches, evaluation, logging,
checkpoints and the loop. Steps `0 .. sft.steps-1` are SFT, the rest GRPO; the state's
step is the data position, so a run resumed from `workdir` continues exactly. The prompt
source (`jaxrl/tasks/prompts.py`) supplies each step's batches, the reward's checker and
the held-out problems. With `model.path` set, a finished run also writes the policy as an
HF checkpoint to `workdir/hf`.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from absl import logging

from jaxrl import checkpoint, compilation, metrics as metrics_lib, resume, sharding
from jaxrl.config_utils import at_least, one_of
from jaxrl.models import hf, loader
from jaxrl.models.decoder import Decoder, param_axes
from jaxrl.rl import grpo, pairrl, rewards, state as state_lib
from jaxrl.rl.sft import SFTConfig, make_sft_step
from jaxrl.rollout import das, policy
from jaxrl.rollout.decode import generate
from jaxrl.rollout.sampling import SamplingParams
from jaxrl.tasks import prompts
from jaxrl.tasks.base import TOKENIZER
from jaxrl.workdir import workdir_lock

# Fields a resume may change: they alter neither the train state nor the data stream
# (`resume.resume_check` refuses any other difference).
# Not model.prefill_attention, model.scan_layers, model.remat nor rl.packing: their results
# equal the defaults' only up to float rounding, so a resumed run would not reproduce an
# uninterrupted one.
SAFE_TO_CHANGE = {"rl.steps", "eval", "checkpoint", "mesh", "sharding", "distributed",
                  "rl.split_phases", "rollout.verify_impl", "rollout.attention_impl",
                  "data.manual_dir", "data.data_dir", "compile"}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """`config.eval`: held-out accuracy every `every` steps on `num_problems` problems."""

    every: int
    num_problems: int

    def __post_init__(self):
        at_least("config.eval.every", self.every, 1)
        at_least("config.eval.num_problems", self.num_problems, 1)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """configs/grpo.py and configs/sft.py, typed."""

    job: str
    seed: int
    task: prompts.TaskConfig
    model: loader.ModelSource
    optim: state_lib.OptimConfig
    sft: SFTConfig
    rl: grpo.RLConfig
    pairrl: pairrl.PairRLConfig
    rollout: das.RolloutConfig
    eval: EvalConfig
    checkpoint: checkpoint.CheckpointConfig
    mesh: sharding.MeshConfig
    sharding: sharding.ShardingConfig
    distributed: sharding.DistributedConfig
    data: prompts.DataConfig
    compile: compilation.CompileConfig

    def __post_init__(self):
        one_of("config.job", self.job, ("train",))
        at_least("config.seed", self.seed, 0)
        if self.sft.steps + self.rl.steps == 0:
            raise ValueError(f"config.sft.steps={self.sft.steps} and config.rl.steps="
                             f"{self.rl.steps}: at least one step in all")
        if self.data.source == "embedded":
            if self.model.path:
                raise ValueError(f"config.model.path={self.model.path!r} needs "
                                 "config.data.source='jsonl'; the embedded tasks train a "
                                 "random-init preset on the character tokenizer (set "
                                 "config.model.path='')")
            task = self.task.make()
            prompt_len, solution_len = task.max_prompt_len, task.max_solution_len + 1
            self._check_positions("the task's longest prompt", prompt_len,
                                  self.rl.max_new_tokens or solution_len)
            if self.sft.judge_every:
                template = pairrl.JudgeTemplate.make(TOKENIZER, "pairwise")
                self._check_positions("a judge-format SFT prompt (config.sft.judge_every)",
                                      template.prompt_len(prompt_len, solution_len),
                                      template.longest_reply + 1)
            return
        if not self.model.path:
            raise ValueError("config.data.source='jsonl' needs config.model.path, an HF "
                             "checkpoint directory: a random-init model cannot read real text")
        if not os.path.isfile(os.path.join(self.model.path, "tokenizer.json")):
            raise ValueError(f"config.model.path={self.model.path!r} has no tokenizer.json")
        if self.sft.steps:
            raise ValueError(f"config.sft.steps={self.sft.steps}, but JSONL math rows have "
                             "only final answers, no reference completions to imitate: set "
                             "config.sft.steps=0")
        if self.rl.max_new_tokens < 1:
            raise ValueError(f"config.rl.max_new_tokens must be >= 1 with config.data.source="
                             f"'jsonl' (there is no task budget), got {self.rl.max_new_tokens}")
        self._check_positions("config.data.max_prompt_len", self.data.max_prompt_len,
                              self.rl.max_new_tokens)

    def _check_positions(self, what: str, prompt_len: int, new_tokens: int) -> None:
        """A prompt plus its completion must fit the model's positions (RoPE was trained
        on no more; the cache is sized by it)."""
        limit = self.model.max_positions()
        if prompt_len + new_tokens > limit:
            raise ValueError(f"{what} ({prompt_len} tokens) plus {new_tokens} new tokens "
                             f"(config.rl.max_new_tokens, 0 = the task's budget) exceeds the "
                             f"model's max_position_embeddings={limit}")

    @property
    def total_steps(self) -> int:
        return self.sft.steps + self.rl.steps


CONFIG = TrainConfig


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup to the SFT rate for the SFT steps, then the RL rate."""
    warm = max(cfg.optim.warmup_steps, 1)
    sft = optax.join_schedules([optax.linear_schedule(0.0, cfg.sft.learning_rate, warm),
                                optax.constant_schedule(cfg.sft.learning_rate)], [warm])
    if cfg.sft.steps == 0:
        sft = optax.linear_schedule(0.0, cfg.rl.learning_rate, warm)
    return optax.join_schedules([sft, optax.constant_schedule(cfg.rl.learning_rate)],
                                [cfg.sft.steps or warm])


class Built(NamedTuple):
    model: Decoder
    source: Any  # tasks.prompts.EmbeddedPrompts | JsonlPrompts
    reward: Any  # rl.rewards.TaskReward | HostReward
    state: state_lib.TrainState
    steps: dict  # "sft" and "rl" jitted steps: step(state, *batch) -> (state, metrics)
    layout: sharding.Layout


def check_batches(cfg: TrainConfig, layout: sharding.Layout) -> None:
    """Each step's rows must split over the batch axes: fails before compiling, naming them."""
    if cfg.sft.steps:
        layout.check_rows(cfg.sft.batch_size, "config.sft.batch_size")
    if cfg.rl.steps:
        layout.check_rows(cfg.rl.num_prompts * cfg.rl.num_generations,
                          "config.rl.num_prompts * config.rl.num_generations")


def build(cfg: TrainConfig, mesh, workdir: str = "") -> Built:
    """Model, prompt source, reward, the initial state placed on the mesh by
    `config.sharding.rules` and the jitted steps; `workdir` keeps the fitted verification
    cost model and the JSONL dataset."""
    layout = sharding.Layout(mesh, cfg.sharding.table)
    check_batches(cfg, layout)
    model, params, tokenizer = loader.load(cfg.model, cfg.seed,
                                           attention_impl=cfg.rollout.attention_impl)
    source = prompts.make_source(cfg.task, cfg.data, tokenizer, seed=cfg.seed,
                                 max_new_tokens=cfg.rl.max_new_tokens,
                                 num_held_out=cfg.eval.num_problems, workdir=workdir)
    reward = rewards.for_source(source, cfg.rl.format_coef)
    tx = state_lib.make_optimizer(cfg.optim, learning_rate_schedule(cfg))
    axes = param_axes(model.cfg)
    params = sharding.shard_params(params, axes, layout)
    rl, rollout_cfg = cfg.rl, cfg.rollout
    history = None
    if rollout_cfg.speculative:
        if rollout_cfg.fit_cost_model:
            c_base, c_tok, draft = policy.fitted_cost_model(
                model, layout, rl.num_prompts * rl.num_generations, rollout_cfg.widths,
                rollout_cfg.verify_impl, os.path.join(workdir, "cost_model.json") if workdir else None,
                shared_dir=cfg.compile.cache_dir,
                drafting=(rollout_cfg, rl.num_generations, source.prompt_len,
                          source.max_new_tokens))
            rollout_cfg = rollout_cfg.replace(cost_base=c_base, cost_per_token=c_tok)
            if draft is not None:
                rollout_cfg = rollout_cfg.replace(draft_cost=draft[0],
                                                  draft_cost_per_row=draft[1])
        history = das.init_history(rollout_cfg, source.num_prompts, rl.num_generations,
                                   source.max_new_tokens)
    state = state_lib.create(params, tx, cfg.seed, with_reference=rl.kl_coef > 0, history=history)
    where = state_lib.shardings(state, axes, layout)
    state = sharding.place(state, where)
    kw = dict(max_new_tokens=source.max_new_tokens, stop_tokens=tuple(tokenizer.eos_ids),
              pad_id=tokenizer.pad_id, layout=layout, state_sharding=where)
    rl_step = (grpo.make_step(model, rl, rollout_cfg, reward, **kw)
               if cfg.pairrl.verifier == "none" else
               pairrl.make_step(model, rl, rollout_cfg, reward, cfg.pairrl, tokenizer,
                                prompt_len=source.prompt_len, **kw))
    steps = {"sft": make_sft_step(model, layout, where), "rl": rl_step}
    return Built(model, source, reward, state, steps, layout)


def evaluate(built: Built, params, temperature: float) -> float | None:
    """Held-out accuracy (greedy, or sampled at `temperature` with a fixed key, so that
    evaluations are comparable) by the source's checker; None without held-out problems."""
    if built.source.held_out is None:
        return None
    prompts_PL, lengths_P, inputs_P = built.source.held_out
    tok, n = built.source.tokenizer, len(lengths_P)
    # Replicated: the held-out set need not split over the devices (and is not the hot path).
    prompts_PL, lengths_P = sharding.place((prompts_PL, lengths_P), built.layout.replicated)
    out = generate(built.model, params, prompts_PL, lengths_P,
                   jnp.arange(n, dtype=jnp.int32), jax.random.key(0),
                   SamplingParams.make(n, temperature=temperature),
                   max_new_tokens=built.source.max_new_tokens, stop_tokens=tuple(tok.eos_ids),
                   pad_id=tok.pad_id)
    score = built.reward if built.reward.is_host else jax.jit(built.reward)
    _, m = score(out.tokens_BN, out.lengths_B, out.finished_B, inputs_P)
    return float(m["accuracy"])


def run(cfg: TrainConfig, workdir: str) -> dict:
    """Trains in `workdir`, resuming from its newest checkpoint that restores; one run per
    workdir at a time."""
    with workdir_lock(workdir, jax.process_index()):
        return _run(cfg, workdir)


def saved_config(cfg: TrainConfig, source) -> dict:
    """What is saved beside each checkpoint and checked on resume: the config, and the
    prepared dataset (whose name carries its files' content hash)."""
    return {**resume.flatten_config(dataclasses.asdict(cfg)),
            "data.prepared": source.info.get("dataset", "embedded")}


def _run(cfg: TrainConfig, workdir: str) -> dict:
    compilation.set_up_cache(cfg.compile)
    compile_start = compilation.seconds()
    mesh = sharding.make_mesh(cfg.mesh)
    built = build(cfg, mesh, workdir)
    source, state, steps = built.source, built.state, built.steps
    logging.info("prompt source: %s", source.info)
    ckpt = checkpoint.Checkpointer(workdir, max_to_keep=cfg.checkpoint.max_to_keep,
                                   cleanup_tmp=True)
    config_now = saved_config(cfg, source)
    metadata = {"config": config_now, "code_version": resume.code_version()}
    start = 0
    if ckpt.latest_step() is not None:
        start, state, _ = ckpt.restore_latest_valid(state, check_metadata=lambda m: (
            resume.resume_check(m.get("config", {}), config_now, SAFE_TO_CHANGE,
                                checkpoint_dir=str(ckpt.directory))))
        logging.info("resumed from %s at step %d", workdir, start)
    total = cfg.total_steps
    lead = jax.process_index() == 0  # logs and exports; every process checkpoints
    writer = metrics_lib.MetricsWriter(workdir, start_step=start + 1)
    progress = metrics_lib.Progress(total, start_step=start, every=max(1, total // 50))
    preemption = checkpoint.PreemptionGuard()
    accuracy, accuracy_sampled = {}, {}
    totals = {"time/rollout_s": 0.0, "time/reward_s": 0.0, "time/update_s": 0.0,
              "spec/drafted": 0, "spec/accepted": 0, "spec/passes": 0, "spec/plain_passes": 0,
              "spec/skipped_drafts": 0}
    rl_tokens, rl_seconds = 0, 0.0
    step_compile_s = {"sft": 0.0, "rl": 0.0}

    def eval_at(step):
        acc = evaluate(built, state.params, 0.0)
        if acc is None:
            return
        # Sampled at the rollout temperature: the pass@1 that the RL objective raises.
        accuracy[step] = acc
        accuracy_sampled[step] = evaluate(built, state.params, cfg.rl.temperature)
        writer.write(step, {"eval/accuracy": acc, "eval/accuracy_sampled": accuracy_sampled[step]})
        if lead:
            print(f"step {step}: held-out accuracy {acc:.3f} greedy, "
                  f"{accuracy_sampled[step]:.3f} sampled at temperature {cfg.rl.temperature}",
                  flush=True)

    # A checkpoint at step s is saved after step s's evaluation was written, and the writer
    # keeps the records up to `start`: only a fresh run evaluates its starting point.
    if start == 0:
        eval_at(0)
    def placed(batch):  # each process feeds its rows; a host reward's inputs stay a list
        return [x if isinstance(x, list) else sharding.shard_batch(x, built.layout)
                for x in batch]

    # The first RL step's program (with DAS the run's largest) compiles on a background
    # thread while SFT trains, instead of stalling the loop after it.
    ahead = compilation.Ahead()
    first_rl = max(start, cfg.sft.steps)
    if first_rl < total:
        logging.info("compiling the RL step (step %d) on a background thread", first_rl + 1)
        ahead.start("rl", steps["rl"].lower, state,
                    *placed(source.rl_batch(first_rl, cfg.rl.num_prompts)))
    step = start
    try:
        while step < total:
            in_sft = step < cfg.sft.steps
            n = cfg.sft.batch_size if in_sft else cfg.rl.num_prompts
            if not in_sft:
                batch = source.rl_batch(step, n)
            elif cfg.sft.is_judge_step(step):
                batch = pairrl.format_batch(source.task, cfg.seed, step, n)
            else:
                batch = source.sft_batch(step, n)
            batch = placed(batch)
            phase = "sft" if in_sft else "rl"
            # This thread's compiles only: the ahead compile is counted apart.
            t0, c0 = time.perf_counter(), compilation.seconds(this_thread=True)
            waited = 0.0 if in_sft else ahead.wait("rl")  # part of the step's time
            state, m = steps[phase](state, *batch)
            m = jax.device_get(m)
            seconds = time.perf_counter() - t0
            compile_s = compilation.seconds(this_thread=True) - c0
            step_compile_s[phase] += compile_s
            step += 1
            if not in_sft:
                rl_tokens += int(m["generated_tokens"])
                rl_seconds += seconds
                for k in totals:
                    totals[k] += m.get(k, 0)
            writer.write(step, {**m, "step_time_s": seconds, "time/compile_s": compile_s,
                                "time/compile_wait_s": waited,
                                "phase": 0 if in_sft else 1})
            shown = {"loss": m["sft_loss"]} if in_sft else {"reward": m["reward"],
                                                            "acc": m["accuracy"]}
            if lead:
                progress.update(step, **shown)
            if step == cfg.sft.steps or step % cfg.eval.every == 0 or step == total:
                eval_at(step)
            stop = preemption.reached(step)  # once per step: every process must agree
            if step % cfg.checkpoint.every == 0 or step == total or stop:
                ckpt.save(step, state, metadata=metadata, force=stop)
            if stop:
                why = preemption.received.name if preemption.received else "preemption"
                logging.warning("%s: saved step %d, exiting", why, step)
                break
    finally:
        ckpt.close()
        writer.close()
        preemption.close()
    if cfg.model.path and step == total:
        params = state.params
        if jax.process_count() > 1:  # every process joins the gather; process 0 writes
            from jax.experimental import multihost_utils
            params = multihost_utils.process_allgather(params, tiled=True)
        if lead:
            hf.export(os.path.join(workdir, "hf"), built.model, params, src=cfg.model.path,
                      eos_ids=source.tokenizer.eos_ids)
    summary = {"steps": step, "accuracy": accuracy, "accuracy_sampled": accuracy_sampled,
               "data": source.info,
               "rl_tokens_per_s": rl_tokens / rl_seconds if rl_seconds else 0.0,
               "rollout_tokens_per_s": (rl_tokens / totals["time/rollout_s"]
                                        if totals["time/rollout_s"] else 0.0),
               "phase_seconds": {k[5:-2]: v for k, v in totals.items() if k.startswith("time/")},
               "compile_seconds": {**step_compile_s, "rl_ahead": ahead.seconds,
                                   "run": compilation.seconds() - compile_start},
               **{k: v for k, v in totals.items() if k.startswith("spec/")}}
    if lead:
        print(metrics_lib.summary_table(summary_rows(summary)))
    return summary


def summary_rows(summary: dict) -> list[tuple[str, Any]]:
    """The end-of-run table: data, accuracy at each evaluation, throughput, speculation and
    the RL time split."""
    rows = [(f"data: {k}", v) for k, v in summary["data"].items()]
    rows += [(f"held-out accuracy at step {k} (greedy / sampled)",
              f"{v:.3f} / {summary['accuracy_sampled'][k]:.3f}")
             for k, v in sorted(summary["accuracy"].items())]
    rows += [("RL tokens/s (whole step)", f"{summary['rl_tokens_per_s']:.1f}")]
    if summary["rollout_tokens_per_s"]:
        rows += [("RL tokens/s (rollout phase)", f"{summary['rollout_tokens_per_s']:.1f}")]
    if summary["spec/passes"]:
        d, a = summary["spec/drafted"], summary["spec/accepted"]
        rows += [("speculation: drafted / accepted tokens",
                  f"{d} / {a} ({100 * a / max(d, 1):.0f}%)"),
                 ("speculation: decode passes (plain decoding's steps)",
                  f"{summary['spec/passes']} ({summary['spec/plain_passes']})"),
                 ("speculation: passes that skipped drafting", summary["spec/skipped_drafts"])]
    c = summary["compile_seconds"]
    rows += [("compile seconds: SFT / RL steps / RL ahead (during SFT) / whole run",
              f"{c['sft']:.1f} / {c['rl']:.1f} / {c['rl_ahead']:.1f} / {c['run']:.1f}")]
    phases = summary["phase_seconds"]
    if any(phases.values()):
        rows += [(f"RL time in {k}", f"{v:.1f}s ({100 * v / sum(phases.values()):.0f}%)")
                 for k, v in phases.items()]
    return rows
