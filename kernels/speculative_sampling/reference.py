"""Speculative sampling in plain jnp: `kernels.sampling.sample_reference` at each of the
K = D + 1 positions of a row, and how many of the row's D drafts match the samples."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.sampling import sample_reference


def accepted_count(tokens_BK: jax.Array, drafts_BD: jax.Array, num_drafts_B: jax.Array):
    """Leading drafts (of the first `num_drafts_B[b]`) equal to the sampled tokens."""
    d = drafts_BD.shape[1]
    match_BD = (jnp.arange(d)[None, :] < num_drafts_B[:, None]) & (drafts_BD == tokens_BK[:, :d])
    return jnp.sum(jnp.cumprod(match_BD.astype(jnp.int32), axis=1), axis=1).astype(jnp.int32)


def check_shapes(logits_BKV, drafts_BD, keys_BK2):
    b, k, _ = logits_BKV.shape
    if drafts_BD.shape != (b, k - 1) or keys_BK2.shape != (b, k, 2):
        raise ValueError(f"logits {logits_BKV.shape}, drafts {drafts_BD.shape}, keys "
                         f"{keys_BK2.shape}: expected [B, K, V], [B, K-1] and [B, K, 2]")


def per_position(x_B, k):
    """A per-row setting `[B]` for each of the row's k positions: `[B * k]`."""
    return jnp.repeat(x_B, k)


def speculative_sample_reference(logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B,
                                 top_p_B, keys_BK2):
    """K = D + 1 positions per row.
    logits_BKV: [B, K, V] float32 or bfloat16: position j's logits choose the token at position j.
    drafts_BD: int32 [B, D]: drafted tokens for positions 0..D-1; entries at j >= num_drafts_B[b]
      are ignored (may be -1).
    num_drafts_B: int32 [B] in [0, D].
    temperature_B float32 (0 = greedy = argmax of raw logits), top_k_B int32 (0 = off),
      top_p_B float32 (1 = off): per row, same for all K positions of the row.
    keys_BK2: uint32 [B, K, 2]: the position key of each position.
    Returns (tokens_BK int32, accepted_B int32, logprobs_BK float32, sample_logprobs_BK float32):
      tokens_BK[b, j] = the position-keyed sample at (b, j) = exactly
        kernels.sampling.sample_reference on that row's logits/settings/key;
      accepted_B[b] = number of leading j < num_drafts_B[b] with drafts_BD[b, j] == tokens_BK[b, j];
      logprobs_BK / sample_logprobs_BK = log-prob of tokens_BK under softmax(raw logits) / under
        the processed distribution (0 when greedy), as sample_reference returns.
    """
    check_shapes(logits_BKV, drafts_BD, keys_BK2)
    b, k, v = logits_BKV.shape
    tokens_R, logprobs_R, sample_logprobs_R = sample_reference(
        logits_BKV.reshape(b * k, v), per_position(temperature_B, k),
        per_position(top_k_B, k), per_position(top_p_B, k), keys_BK2.reshape(b * k, 2))
    tokens_BK = tokens_R.reshape(b, k)
    return (tokens_BK, accepted_count(tokens_BK, drafts_BD, num_drafts_B),
            logprobs_R.reshape(b, k), sample_logprobs_R.reshape(b, k))
