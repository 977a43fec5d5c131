"""Position-keyed sampling (ARCHITECTURE.md, invariant 1).

The token for sequence `uid` at completion position `t` is

    argmax(process(logits) + Gumbel(key(base_key, uid, t)))

where `process` is temperature, then top-k, then top-p, each a deterministic function of
the logits. The noise depends only on `(base_key, uid, t)`, never on the batch a row sits
in, so plain decoding, speculative decoding, any batch size, row order or compaction all
pick the same token from the same logits. Temperature 0 means greedy (argmax of logits).

Top-k and top-p are defined by thresholds (keep every token whose scaled logit is at least
the threshold), so ties are kept and a kernel may find the same threshold by bisection.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class SamplingParams:
    """Per-row sampling settings (arrays of shape [B])."""

    temperature_B: jax.Array  # float32; 0 = greedy
    top_k_B: jax.Array  # int32; 0 = off
    top_p_B: jax.Array  # float32; 1 = off

    @classmethod
    def make(cls, batch: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0) -> "SamplingParams":
        if not temperature >= 0:  # also rejects NaN
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        return cls(temperature_B=jnp.full((batch,), temperature, jnp.float32),
                   top_k_B=jnp.full((batch,), top_k, jnp.int32),
                   top_p_B=jnp.full((batch,), top_p, jnp.float32))

    def take(self, rows_B: jax.Array) -> "SamplingParams":
        return jax.tree.map(lambda x: x[rows_B], self)


def position_keys(base_key: jax.Array, uids_B: jax.Array, t_B: jax.Array) -> jax.Array:
    """One PRNG key per (uid, t); a function of those two numbers alone."""
    return jax.vmap(lambda u, t: jax.random.fold_in(jax.random.fold_in(base_key, u), t))(
        uids_B, t_B)


def gumbel_noise(base_key: jax.Array, uids_B: jax.Array, t_B: jax.Array, vocab: int) -> jax.Array:
    keys = position_keys(base_key, uids_B, t_B)
    return jax.vmap(lambda k: jax.random.gumbel(k, (vocab,), jnp.float32))(keys)


def _filter_top_k_top_p(scaled_BV, top_k_B, top_p_B):
    """Masks (to -inf) what top-k then top-p drop; thresholds from one descending sort."""
    v = scaled_BV.shape[-1]
    sorted_BV = -jnp.sort(-scaled_BV, axis=-1)
    k_B = jnp.where(top_k_B > 0, jnp.minimum(top_k_B, v), v)
    kth_B = jnp.take_along_axis(sorted_BV, (k_B - 1)[:, None], axis=-1)
    in_top_k_BV = jnp.arange(v)[None, :] < k_B[:, None]
    probs_BV = jax.nn.softmax(jnp.where(in_top_k_BV, sorted_BV, -jnp.inf), axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    # Smallest prefix whose mass reaches top_p; the first token is always kept. top_p >= 1
    # keeps all: float32 cumsum can reach 1.0 before the tail, which would drop it.
    in_top_p_BV = (mass_before_BV < top_p_B[:, None]) | (top_p_B[:, None] >= 1.0)
    n_keep_B = jnp.maximum(jnp.sum(in_top_p_BV & in_top_k_BV, -1), 1)
    pth_B = jnp.take_along_axis(sorted_BV, (n_keep_B - 1)[:, None], axis=-1)
    threshold_B1 = jnp.maximum(kth_B, pth_B)
    return jnp.where(scaled_BV >= threshold_B1, scaled_BV, -jnp.inf)


def process_logits(logits_BV: jax.Array, params: SamplingParams) -> jax.Array:
    """Temperature, top-k, top-p: the logits of the sampling distribution (float32)."""
    logits_BV = logits_BV.astype(jnp.float32)
    t_B1 = params.temperature_B[:, None]
    scaled_BV = logits_BV / jnp.where(t_B1 > 0, t_B1, 1.0)
    needs_filter = jnp.any(params.top_k_B > 0) | jnp.any(params.top_p_B < 1.0)
    return jax.lax.cond(needs_filter, _filter_top_k_top_p, lambda x, *_: x,
                        scaled_BV, params.top_k_B, params.top_p_B)


@struct.dataclass
class Sample:
    tokens_B: jax.Array  # int32
    logprobs_B: jax.Array  # float32, under the raw model distribution (softmax of logits)
    sample_logprobs_B: jax.Array  # float32, under the processed distribution (0 when greedy)


def sample(logits_BV: jax.Array, params: SamplingParams, base_key: jax.Array,
           uids_B: jax.Array, t_B: jax.Array) -> Sample:
    """The position-keyed sample for each row, with its log-probs."""
    logits_BV = logits_BV.astype(jnp.float32)
    processed_BV = process_logits(logits_BV, params)
    noise_BV = gumbel_noise(base_key, uids_B, t_B, logits_BV.shape[-1])
    greedy_B = params.temperature_B <= 0
    tokens_B = jnp.where(greedy_B, jnp.argmax(logits_BV, -1),
                         jnp.argmax(processed_BV + noise_BV, -1)).astype(jnp.int32)
    # logit[token] - logsumexp(logits): one reduction each, no [B, V] log-softmax array.
    logprob = lambda x_BV: (jnp.take_along_axis(x_BV, tokens_B[:, None], -1)[:, 0]  # noqa: E731
                            - jax.nn.logsumexp(x_BV, axis=-1))
    logprobs_B = logprob(logits_BV)
    sample_logprobs_B = jnp.where(greedy_B, 0.0, logprob(processed_BV))
    return Sample(tokens_B, logprobs_B, sample_logprobs_B)
