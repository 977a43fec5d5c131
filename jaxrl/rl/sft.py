"""Supervised warm-up on reference solutions: the same state, step counter and checkpoints
as RL, so a run is SFT steps followed by GRPO steps."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxrl.config_utils import at_least, positive
from jaxrl.models.decoder import Decoder
from jaxrl.rl.logprobs import completion_logits, completion_mask, token_logprobs
from jaxrl.rl.state import TrainState, apply_gradients


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """`config.sft`: supervised steps on reference solutions before RL (0 = none)."""

    steps: int
    batch_size: int
    learning_rate: float
    judge_every: int  # every k-th step teaches the judge format (rl/pairrl.format_batch)

    def __post_init__(self):
        at_least("config.sft.steps", self.steps, 0)
        at_least("config.sft.judge_every", self.judge_every, 0)
        at_least("config.sft.batch_size", self.batch_size, 1)
        positive("config.sft.learning_rate", self.learning_rate)

    def is_judge_step(self, step: int) -> bool:
        """Steps judge_every - 1, 2 judge_every - 1, ...: the judge-format batches."""
        return self.judge_every > 0 and (step + 1) % self.judge_every == 0


def sft_loss(model: Decoder, params, prompts_PL, prompt_lengths_P, solutions_PN,
             solution_lengths_P):
    """Mean negative log-likelihood per solution token (EOS included)."""
    logits_PNV = completion_logits(model, params, prompts_PL, prompt_lengths_P, solutions_PN,
                                   solution_lengths_P)
    mask_PN = completion_mask(solution_lengths_P, solutions_PN.shape[1])
    nll = -jnp.sum(token_logprobs(logits_PNV, solutions_PN) * mask_PN) / jnp.maximum(mask_PN.sum(), 1)
    hits = (jnp.argmax(logits_PNV, -1) == solutions_PN) * mask_PN
    return nll, {"token_accuracy": hits.sum() / jnp.maximum(mask_PN.sum(), 1)}


def make_sft_step(model: Decoder, layout=None, state_sharding=None):
    """`step(state, prompts_PL, prompt_lengths_P, solutions_PN, solution_lengths_P)`; with a
    `sharding.Layout` the new state keeps `state_sharding` (the batch comes placed)."""
    keep = {} if state_sharding is None else {"out_shardings": (state_sharding,
                                                                layout.replicated)}

    @functools.partial(jax.jit, donate_argnums=0, **keep)
    def step(state: TrainState, prompts_PL, prompt_lengths_P, solutions_PN, solution_lengths_P):
        (loss, metrics), grads = jax.value_and_grad(
            functools.partial(sft_loss, model), has_aux=True)(
                state.params, prompts_PL, prompt_lengths_P, solutions_PN, solution_lengths_P)
        state, opt_metrics = apply_gradients(state, grads)
        return state.replace(step=state.step + 1), {"sft_loss": loss, **metrics, **opt_metrics}
    return step
