"""One GRPO step as pure functions: rollout -> reward -> advantages -> minibatch updates.

    rollout, spec_stats = rollout_phase(model, rl, rollout_cfg, state, prompts, prompt_ids)
    rewards_B, reward_metrics = reward(rollout..., targets)
    state, metrics = update_phase(model, rl, state, prompts, prompt_ids, rollout, rewards_B)

`make_step` composes them in one `jax.jit` with the state donated (a JAX reward), or in three
jits split at the reward (a host reward, or `rl.split_phases`). Shape letters:
docs/DESIGN.md#glossary (P prompts, G generations per prompt, B = P * G rows).
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl import sharding
from jaxrl.config_utils import at_least, one_of, positive
from jaxrl.models.decoder import Decoder
from jaxrl.rl import advantages as adv_lib
from jaxrl.rl import losses
from jaxrl.rl import packing as packing_lib
from jaxrl.rl import rewards as rewards_lib
from jaxrl.rl.logprobs import completion_mask, completion_stats, pack_if_fits
from jaxrl.rl.state import TrainState, apply_gradients
from jaxrl.rollout import das
from jaxrl.rollout.decode import Rollout, generate
from jaxrl.rollout.sampling import SamplingParams, check_sampling

# Keys of a step: state.key(salt). PairRL's judge phase uses 3 and 4 (rl/pairrl.py).
_ROLLOUT_SALT, _SHUFFLE_SALT, _EXTRA_SHUFFLE_SALT = 0, 1, 2
OLD_LOGPROBS = ("recompute", "sampler")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """`config.rl` (configs/grpo.py explains each field)."""

    steps: int
    learning_rate: float
    num_prompts: int
    num_generations: int
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    advantage: str
    clip_low: float
    clip_high: float
    dual_clip: float
    loss_agg: str
    kl_coef: float
    kl_estimator: str
    num_minibatches: int
    num_epochs: int
    old_logprobs: str
    mask_zero_signal: bool
    overlong_filter: bool
    format_coef: float
    split_phases: bool
    packing: str
    pack_rows_frac: float

    def __post_init__(self):
        p = "config.rl"
        at_least(f"{p}.steps", self.steps, 0)
        positive(f"{p}.learning_rate", self.learning_rate)
        for name in ("num_prompts", "num_minibatches", "num_epochs"):
            at_least(f"{p}.{name}", getattr(self, name), 1)
        if not self.num_generations >= 2:
            raise ValueError(f"{p}.num_generations must be >= 2 for group advantages, got "
                             f"{self.num_generations}")
        if (self.num_prompts * self.num_generations) % self.num_minibatches:
            raise ValueError(f"{p}.num_minibatches={self.num_minibatches} must divide "
                             f"num_prompts * num_generations = "
                             f"{self.num_prompts * self.num_generations}")
        at_least(f"{p}.max_new_tokens", self.max_new_tokens, 0)
        if not self.temperature > 0:
            raise ValueError(f"{p}.temperature must be > 0 for GRPO, got {self.temperature}: "
                             "greedy rollouts make every group's completions equal, so every "
                             "advantage and gradient is 0")
        check_sampling(self.temperature, self.top_k, self.top_p, f"{p}.")
        one_of(f"{p}.advantage", self.advantage, adv_lib.METHODS)
        one_of(f"{p}.loss_agg", self.loss_agg, losses.AGG_MODES)
        one_of(f"{p}.kl_estimator", self.kl_estimator, losses.KL_KINDS)
        one_of(f"{p}.old_logprobs", self.old_logprobs, OLD_LOGPROBS)
        if not 0 <= self.clip_low < 1:
            raise ValueError(f"{p}.clip_low must be in [0, 1), got {self.clip_low}")
        at_least(f"{p}.clip_high", self.clip_high, 0)
        if self.dual_clip and not self.dual_clip > 1:
            raise ValueError(f"{p}.dual_clip must be 0 (off) or > 1, got {self.dual_clip}")
        at_least(f"{p}.kl_coef", self.kl_coef, 0)
        at_least(f"{p}.format_coef", self.format_coef, 0)
        one_of(f"{p}.packing", self.packing, packing_lib.PACKINGS)
        if not 0 < self.pack_rows_frac <= 1:
            raise ValueError(f"{p}.pack_rows_frac must be in (0, 1], got {self.pack_rows_frac}")

    def replace(self, **kw) -> "RLConfig":
        return dataclasses.replace(self, **kw)


def repeat_groups(x_P, g: int):
    """Each prompt's row repeated G times, groups contiguous: row b is prompt b // G."""
    return jnp.repeat(x_P, g, axis=0)


def _rows(layout, x):
    """`x` split over the batch axes (`sharding.Layout.rows`); as it is without a layout."""
    return x if layout is None else layout.rows(x)


def rollout_phase(model: Decoder, rl: RLConfig, rollout_cfg: das.RolloutConfig,
                  state: TrainState, prompts_PL, prompt_lengths_P, prompt_ids_P, *,
                  max_new_tokens: int, stop_tokens: tuple[int, ...], pad_id: int,
                  layout=None, temperature: jax.Array | None = None):
    """`(rollout, spec_stats)`: plain decoding (`spec_stats` None), or DAS speculative
    decoding from `state.history` with `rollout_cfg.speculative`; the same tokens either way.
    With a `sharding.Layout` the B rollout rows are split over the batch axes (the P prompts
    may be too few to split). `temperature` (a float32 scalar, > 0) replaces
    `rl.temperature` as an argument of the program, so one compile serves a sweep."""
    g = rl.num_generations
    prompts_BL, plen_B = _rows(layout, (repeat_groups(prompts_PL, g),
                                        repeat_groups(prompt_lengths_P, g)))
    b = prompts_BL.shape[0]
    sampling = SamplingParams.make(b, rl.temperature, rl.top_k, rl.top_p)
    if temperature is not None:
        sampling = sampling.replace(temperature_B=jnp.full((b,), temperature, jnp.float32))
    args = (model, state.params, prompts_BL, plen_B, _rows(layout, jnp.arange(b, dtype=jnp.int32)),
            state.key(_ROLLOUT_SALT), sampling)
    kw = dict(max_new_tokens=max_new_tokens, stop_tokens=stop_tokens, pad_id=pad_id,
              layout=layout)
    if not rollout_cfg.speculative:
        return _rows(layout, generate(*args, **kw)), None
    out, stats = das.rollout(*args, state.history, prompt_ids_P, cfg=rollout_cfg, group=g, **kw)
    return _rows(layout, out), stats


def _length_stats(lengths_B):
    x = lengths_B.astype(jnp.float32)
    return {"response_length/mean": x.mean(), "response_length/p50": jnp.percentile(x, 50),
            "response_length/p90": jnp.percentile(x, 90), "response_length/max": x.max()}


@struct.dataclass
class ExtraRows:
    """Rows of a second role trained in the same update (PairRL's judge rollouts): their
    prompts, the completions sampled for them, one advantage per row, and the loss mask.
    Their loss is aggregated (`rl.loss_agg`) over their own masked tokens and its gradient
    added to the generator's with the weight that `update_phase` gets as `extra_coef`."""

    prompts_BL: jax.Array
    prompt_lengths_B: jax.Array
    rollout: Rollout
    adv_B: jax.Array
    mask_BN: jax.Array  # float32


def _policy_term(model, rl, params, prompts_BL, plen_B, rollout, adv_B, mask_BN, old_BN,
                 ref_BN, layout=None):
    """The PPO-clip loss (plus the KL term) of some rows and its metrics; `layout` packs the
    rows' forward (rl/logprobs.py)."""
    tokens_BN, lengths_B = rollout.tokens_BN, rollout.lengths_B
    logp_BN, entropy_BN = completion_stats(model, params, prompts_BL, plen_B, tokens_BN,
                                           lengths_B, layout)
    loss, m = losses.policy_loss(
        logp_BN, old_BN, adv_B, mask_BN, clip_low=rl.clip_low, clip_high=rl.clip_high,
        dual_clip=rl.dual_clip or None, agg=rl.loss_agg)
    if ref_BN is not None:
        kl = losses.aggregate(losses.kl_penalty(logp_BN, ref_BN, rl.kl_estimator), mask_BN,
                              rl.loss_agg)
        loss = loss + rl.kl_coef * kl
        m["kl_ref"] = kl
    valid_BN = completion_mask(lengths_B, tokens_BN.shape[1])
    m["entropy"] = losses.masked_mean(entropy_BN, valid_BN)
    m["sampler_trainer_logprob_gap"] = (
        jnp.sum(jnp.abs(logp_BN - rollout.logprobs_BN) * valid_BN)
        / jnp.maximum(valid_BN.sum(), 1.0))
    return loss, m


def _policy_grads(model, rl, params, prompts_BL, plen_B, rollout, adv_B, mask_BN, old_BN,
                  ref_BN):
    """`((loss, metrics), grads)` of `_policy_term`, its forward packed where the rows fit
    (`rl.packing`; the choice is made outside the gradient)."""
    def grads(layout):
        return jax.value_and_grad(lambda p: _policy_term(
            model, rl, p, prompts_BL, plen_B, rollout, adv_B, mask_BN, old_BN, ref_BN,
            layout), has_aux=True)(params)
    ((loss, m), g), packed = pack_if_fits(grads, rl.packing, rl.pack_rows_frac, prompts_BL,
                                          plen_B, rollout.tokens_BN, rollout.lengths_B)
    if rl.packing != "none":
        m["packing/packed_frac"] = packed.astype(jnp.float32)
    return (loss, m), g


def _shuffled_rows(key_of, b: int, rl: RLConfig):
    """Row indices `[epochs * minibatches, b / minibatches]`: a permutation per epoch."""
    return jnp.stack([jax.random.permutation(key_of(e), b).reshape(rl.num_minibatches, -1)
                      for e in range(rl.num_epochs)]).reshape(-1, b // rl.num_minibatches)


def update_phase(model: Decoder, rl: RLConfig, state: TrainState, prompts_PL, prompt_lengths_P,
                 prompt_ids_P, rollout: Rollout, rewards_B, extra: ExtraRows | None = None, *,
                 extra_coef: float = 0.0, layout=None) -> tuple[TrainState, dict]:
    """Minibatch PPO-clip updates on the generator's rows; with `extra`, each minibatch also
    takes its share of those rows (shuffled by their own key) and steps on the gradient of
    `generator loss + extra_coef * extra loss`, each loss aggregated over its own rows. With
    a `sharding.Layout` each minibatch's rows are split over the batch axes."""
    g = rl.num_generations
    prompts_BL, plen_B = _rows(layout, (repeat_groups(prompts_PL, g),
                                        repeat_groups(prompt_lengths_P, g)))
    rollout, rewards_B = _rows(layout, (rollout, rewards_B))
    tokens_BN, lengths_B = rollout.tokens_BN, rollout.lengths_B
    b, n = tokens_BN.shape
    for rows in (b,) if extra is None else (b, extra.adv_B.shape[0]):
        if rows % rl.num_minibatches:
            raise ValueError(f"a batch of {rows} rows does not split into "
                             f"rl.num_minibatches={rl.num_minibatches}")
    rewards_PG = rewards_B.reshape(-1, g)
    adv_B = adv_lib.group_advantages(rewards_PG, rl.advantage).reshape(b)
    signal_P = adv_lib.has_signal_P(rewards_PG)

    mask_BN = completion_mask(lengths_B, n)
    if rl.overlong_filter:
        mask_BN = losses.overlong_mask(rollout.finished_B, mask_BN)
    if rl.mask_zero_signal:  # no gradient either way; masked, they do not dilute token-mean
        mask_BN = mask_BN * repeat_groups(signal_P, g)[:, None]
    gen = (prompts_BL, plen_B, rollout, adv_B, mask_BN)
    roles = (gen,) if extra is None else (
        gen, (extra.prompts_BL, extra.prompt_lengths_B, extra.rollout, extra.adv_B,
              extra.mask_BN))

    def logprobs_of(params, prompts_BL, plen_B, out, *_):
        """Log-probs of every row's completion, a minibatch of rows at a time: the logits
        of the whole batch at once ([B, N, V] float32) would hold 47 GiB at the 0.5B shape
        with a 152k vocabulary, more than the update itself."""
        rows_B = out.tokens_BN.shape[0]

        def chunk(rows_M):
            rows = (prompts_BL[rows_M], plen_B[rows_M], out.tokens_BN[rows_M],
                    out.lengths_B[rows_M])
            return pack_if_fits(lambda layout: completion_stats(model, params, *rows, layout)[0],
                                rl.packing, rl.pack_rows_frac, *rows)[0]
        rows_CM = jnp.arange(rows_B).reshape(rl.num_minibatches, -1)
        return jax.lax.map(chunk, rows_CM).reshape(rows_B, -1)

    if rl.old_logprobs == "recompute":
        old = tuple(jax.lax.stop_gradient(logprobs_of(state.params, *r)) for r in roles)
    else:
        old = tuple(r[2].logprobs_BN for r in roles)
    ref = tuple(logprobs_of(state.ref_params, *r) if rl.kl_coef > 0 else None for r in roles)

    def minibatch(state, rows):
        # Each role's gradient is its own value_and_grad, summed with the role's weight:
        # the generator's is then the very computation of standard RL.
        loss, metrics, grads = 0.0, {}, None
        for i, (role, old_BN, ref_BN, rows_M) in enumerate(zip(roles, old, ref, rows)):
            take = lambda x: _rows(layout, jax.tree.map(lambda a: a[rows_M], x))  # noqa: E731
            (role_loss, m), role_grads = _policy_grads(model, rl, state.params, *take(role),
                                                       take(old_BN), take(ref_BN))
            if i == 0:
                loss, metrics, grads = role_loss, m, role_grads
            else:
                loss = loss + extra_coef * role_loss
                grads = jax.tree.map(lambda g, e: g + extra_coef * e, grads, role_grads)
                m["loss"] = role_loss
                metrics.update({f"verifier/{k}": v for k, v in m.items()})
        state, opt_metrics = apply_gradients(state, grads)
        return state, {"loss": loss, **metrics, **opt_metrics}

    rows = (_shuffled_rows(lambda e: state.key(_SHUFFLE_SALT, e), b, rl),)
    if extra is not None:
        rows += (_shuffled_rows(lambda e: state.key(_EXTRA_SHUFFLE_SALT, e),
                                extra.adv_B.shape[0], rl),)
    state, per_update = jax.lax.scan(minibatch, state, rows)
    metrics = jax.tree.map(jnp.mean, per_update)
    # Before any update the trainer's params are the sampler's: the first minibatch's gap is
    # the sampler/trainer numerical mismatch (later ones include the updates).
    metrics["sampler_trainer_logprob_gap"] = per_update["sampler_trainer_logprob_gap"][0]
    metrics.update(_length_stats(lengths_B))
    metrics.update({"reward": rewards_B.mean(), "groups_with_signal": signal_P.mean(),
                    "truncated_frac": 1.0 - rollout.finished_B.mean(),
                    "generated_tokens": lengths_B.sum()})
    if state.history is not None:  # this step's outputs join each prompt's window
        state = state.replace(history=das.record(state.history, prompt_ids_P, tokens_BN,
                                                 lengths_B))
    return state.replace(step=state.step + 1), metrics


def make_step(model: Decoder, rl: RLConfig, rollout_cfg: das.RolloutConfig, reward, *,
              max_new_tokens: int, stop_tokens: tuple[int, ...], pad_id: int,
              layout=None, state_sharding=None, judge_phase=None, judge_coef: float = 0.0):
    """`step(state, prompts_PL, prompt_lengths_P, reward_inputs_P, prompt_ids_P) ->
    (state, metrics)`.

    `reward_inputs_P` is per prompt what the reward takes: the targets array of a JAX reward,
    a list of answers for a host reward. `prompt_ids_P` (int32) names each prompt across
    steps, for the rollout history of speculative decoding (`rollout_cfg.speculative`; the
    state must then carry a `History`). A JAX reward without `rl.split_phases` makes
    rollout, reward and update one jit with the state donated. A host reward, or
    `rl.split_phases`, runs three jits and reports each phase's wall time (`time/*_s`); the
    results are the same. Either step has a `.lower(*args)`: the jit's own, or the split
    step's rollout program's.

    With a `sharding.Layout` the rollout rows, KV cache and minibatches are split over the
    batch axes, and the new state keeps `state_sharding` (`state.shardings`). A host reward
    then scores each process's own rows (`reward_inputs_P` is the whole batch's list).

    `judge_phase(state, prompts_PL, prompt_lengths_P, rollout, rewards_B) -> (ExtraRows,
    metrics)`, a pure function (PairRL's, rl/pairrl.py), runs between the reward and the
    update (its own timed jit when split); its rows join the update with weight `judge_coef`.
    """
    g = rl.num_generations
    rollout = functools.partial(rollout_phase, model, rl, rollout_cfg,
                                max_new_tokens=max_new_tokens, stop_tokens=stop_tokens,
                                pad_id=pad_id, layout=layout)
    update = functools.partial(update_phase, model, rl, extra_coef=judge_coef, layout=layout)
    keep = {} if state_sharding is None else {"out_shardings": (state_sharding,
                                                                layout.replicated)}
    judge = judge_phase or (lambda *_: (None, {}))

    def rewards_of(out, inputs_P):
        if not reward.is_host:
            return reward(out.tokens_BN, out.lengths_B, out.finished_B, repeat_groups(inputs_P, g))
        if layout is None:
            return reward(out.tokens_BN, out.lengths_B, out.finished_B,
                          [x for x in inputs_P for _ in range(g)])
        rows = sharding.process_rows(out.lengths_B.sharding, out.lengths_B.shape)
        inputs_B = [x for x in inputs_P for _ in range(g)][rows]
        rewards, metrics = reward(*map(sharding.local_rows, (out.tokens_BN, out.lengths_B,
                                                             out.finished_B)), inputs_B)
        return (jax.make_array_from_process_local_data(out.lengths_B.sharding, rewards,
                                                       out.lengths_B.shape),
                rewards_lib.across_processes(metrics))

    def rollout_metrics(out, stats):
        return {} if stats is None else das.metrics(stats, out.lengths_B)

    if not reward.is_host and not rl.split_phases:
        @functools.partial(jax.jit, donate_argnums=0, **keep)
        def step(state, prompts_PL, prompt_lengths_P, targets_PT, prompt_ids_P):
            out, stats = rollout(state, prompts_PL, prompt_lengths_P, prompt_ids_P)
            rewards_B, reward_metrics = rewards_of(out, targets_PT)
            extra, judge_metrics = judge(state, prompts_PL, prompt_lengths_P, out, rewards_B)
            state, metrics = update(state, prompts_PL, prompt_lengths_P, prompt_ids_P, out,
                                    rewards_B, extra)
            return state, {**metrics, **reward_metrics, **rollout_metrics(out, stats),
                           **judge_metrics}
        return step

    rollout_jit = jax.jit(rollout)
    reward_fn = rewards_of if reward.is_host else jax.jit(rewards_of)
    judge_jit = jax.jit(judge)
    update_jit = jax.jit(update, donate_argnums=0, **keep)

    def split_step(state, prompts_PL, prompt_lengths_P, inputs_P, prompt_ids_P):
        t0 = time.perf_counter()
        out, stats = jax.block_until_ready(
            rollout_jit(state, prompts_PL, prompt_lengths_P, prompt_ids_P))
        t1 = time.perf_counter()
        rewards_B, reward_metrics = jax.block_until_ready(reward_fn(out, inputs_P))
        rewards_B = jnp.asarray(rewards_B)
        t2 = time.perf_counter()
        extra, judge_metrics = jax.block_until_ready(
            judge_jit(state, prompts_PL, prompt_lengths_P, out, rewards_B))
        t3 = time.perf_counter()
        state, metrics = jax.block_until_ready(
            update_jit(state, prompts_PL, prompt_lengths_P, prompt_ids_P, out, rewards_B,
                       extra))
        t4 = time.perf_counter()
        times = {"time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "time/update_s": t4 - t3,
                 "time/rollout_tokens_per_s": float(metrics["generated_tokens"]) / (t1 - t0)}
        if judge_phase is not None:
            times["time/judge_s"] = t3 - t2
        return state, {**metrics, **reward_metrics, **rollout_metrics(out, stats),
                       **judge_metrics, **times}

    def lower(state, prompts_PL, prompt_lengths_P, inputs_P, prompt_ids_P):
        """The rollout's program, the step's largest, lowered as a jitted step's `.lower`
        would be (what `compilation.Ahead` compiles ahead)."""
        return rollout_jit.lower(state, prompts_PL, prompt_lengths_P, prompt_ids_P)
    split_step.lower = lower
    return split_step
