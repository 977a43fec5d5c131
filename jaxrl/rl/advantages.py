"""Group-relative advantages: one scalar per completion, from the rewards of its group.

Rewards come as `rewards_PG`: P prompts, G completions sampled for each. Every method
centres a reward on its own group, so no value network is needed.

- 'grpo'   (DeepSeekMath, Shao et al. 2024, eq. 3): `(r - mean_g) / (std_g + eps)`.
  `std_g` is the population std (divide by G). The paper writes only `std(r)`; TRL and
  verl call `torch.std`, which divides by G - 1, so their advantages are smaller by
  `sqrt((G - 1) / G)` (0.87 at G = 4, 0.97 at G = 16). For a fixed G that is one constant
  factor: it keeps the direction of the policy gradient and shifts only its balance against
  a KL term. With the population std an even split of 0/1 rewards gets advantages of +-1.
- 'drgrpo' (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training"):
  `r - mean_g`. Dividing by the std up-weights groups that are nearly all right or all
  wrong (small std), a question-difficulty bias; Dr. GRPO drops it.
- 'rloo'   (REINFORCE leave-one-out, Kool et al. 2019; Ahmadian et al. 2024):
  `r - mean of the other G - 1 rewards` `= G / (G - 1) * (r - mean_g)`; the baseline does
  not depend on the sample itself, so the gradient estimate stays unbiased.

A group whose rewards are all equal gets advantage 0 under every method, so it adds
nothing to the policy gradient; `has_signal_P` finds such groups for dynamic sampling
(DAPO, Yu et al. 2025), which drops them and samples more prompts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

METHODS = ("grpo", "drgrpo", "rloo")


def group_advantages(rewards_PG: jax.Array, method: str, eps: float = 1e-6) -> jax.Array:
    """float32 advantages `[P, G]`. `method` is static (one of METHODS)."""
    if method not in METHODS:
        raise ValueError(f"unknown advantage method {method!r}; valid: {list(METHODS)}")
    rewards_PG = jnp.asarray(rewards_PG).astype(jnp.float32)
    if rewards_PG.ndim != 2:
        raise ValueError(f"rewards_PG must be [P, G], got shape {rewards_PG.shape}")
    g = rewards_PG.shape[1]
    centred_PG = rewards_PG - jnp.mean(rewards_PG, axis=1, keepdims=True)
    if method == "grpo":
        std_P1 = jnp.sqrt(jnp.mean(jnp.square(centred_PG), axis=1, keepdims=True))
        return centred_PG / (std_P1 + eps)
    if method == "drgrpo":
        return centred_PG
    if g < 2:
        raise ValueError(f"rloo needs G >= 2 completions per prompt (no others to leave "
                         f"out), got G = {g}")
    return centred_PG * (g / (g - 1))


def has_signal_P(rewards_PG: jax.Array) -> jax.Array:
    """bool `[P]`: the group's rewards are not all equal, so its advantages are not all 0."""
    rewards_PG = jnp.asarray(rewards_PG)
    return jnp.max(rewards_PG, axis=1) != jnp.min(rewards_PG, axis=1)
