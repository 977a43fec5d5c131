"""Log-probs of completions under a policy: the trainer's side of the sampler/trainer pair.

A row is its right-padded prompt followed by its completion, with the padding between them
masked out; positions count only real tokens, exactly as in decoding, so in float32 these
log-probs equal the sampler's raw log-probs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl.models.decoder import Decoder


def completion_logits(model: Decoder, params, prompts_BL: jax.Array, prompt_lengths_B: jax.Array,
                      completions_BN: jax.Array, completion_lengths_B: jax.Array) -> jax.Array:
    """float32 logits `[B, N, V]`: row b, index i is the distribution of completion token i."""
    b, l = prompts_BL.shape
    n = completions_BN.shape[1]
    tokens_BT = jnp.concatenate([prompts_BL, completions_BN], axis=1)
    valid_BT = jnp.concatenate([jnp.arange(l)[None] < prompt_lengths_B[:, None],
                                jnp.arange(n)[None] < completion_lengths_B[:, None]], axis=1)
    # Token i of the completion is predicted at the previous real token: the last prompt
    # token for i = 0, completion token i-1 otherwise.
    i_N = jnp.arange(n)
    at_BN = jnp.where(i_N[None] == 0, prompt_lengths_B[:, None] - 1, l + i_N[None] - 1)
    return model.apply({"params": params}, tokens_BT, attention_mask_BT=valid_BT,
                       logits_at_BK=at_BN)


def token_logprobs(logits_BNV: jax.Array, tokens_BN: jax.Array) -> jax.Array:
    return (jnp.take_along_axis(logits_BNV, tokens_BN[..., None], -1)[..., 0]
            - jax.nn.logsumexp(logits_BNV, axis=-1))


def completion_mask(completion_lengths_B: jax.Array, n: int) -> jax.Array:
    return (jnp.arange(n)[None] < completion_lengths_B[:, None]).astype(jnp.float32)
