"""The position-keyed sampling rule in plain jnp: the one definition that the decode loop,
speculative verification and the speculative-sampling kernels all reproduce.

A position key is two uint32 words (the key data of `fold_in(fold_in(seed, uid), t)`). The
Gumbel noise of vocabulary entry `i` at that position is a keyed integer hash of `i`:

    x = mix32(mix32(i * 0x9E3779B9 + key[0]) ^ key[1])     (uint32, wrapping)
    u = ((x >> 9) + 0.5) / 2**23                            (in (0, 1), exact in float32)
    g = -log(-log(u))

(23 bits, not 24: float32(2**24 - 0.5) rounds to 2**24, which would make u = 1 and g = +inf.)

`mix32` is Wellons' lowbias32. Integer steps are exact on every backend, so a kernel gets
the same noise as this reference. The hash is 19 uint32 operations per entry (8 per mix32:
three xor-shifts of 2 and two multiplies; the index's multiply-add; the xor with key[1]),
about 17 instructions where a multiply-add and a three-input xor are one each, as on NVIDIA
GPUs (counted from the source, not from compiled code). JAX's default threefry2x32 costs
~120 per 32-bit word (20 rounds of add, rotate, xor, and the key injections), which matters
when verification samples `k+1` positions over a 152k vocabulary. The tests check the noise
against the standard Gumbel law.

Processing is temperature, then top-k, then top-p, as thresholds on the scaled logits
(ties are kept), so a kernel may find the same thresholds by bisection instead of a sort.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

GOLDEN = 0x9E3779B9


def mix32(x: jax.Array) -> jax.Array:
    """Wellons' lowbias32 finaliser on uint32 (full avalanche, bijective)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def position_hash(index: jax.Array, key0: jax.Array, key1: jax.Array) -> jax.Array:
    """The uint32 hash of vocabulary entries `index` (uint32) at position key `(key0, key1)`."""
    return mix32(mix32(index * jnp.uint32(GOLDEN) + key0) ^ key1)


def uniform_from_hash(x: jax.Array) -> jax.Array:
    """float32 in (0, 1): the top 23 bits plus one half, exact (max 1 - 2**-24, min 2**-24).
    The 23 bits go through int32, the same value: Mosaic (TPU) converts only signed integers
    to float."""
    return ((x >> 9).astype(jnp.int32).astype(jnp.float32) + 0.5) * (1.0 / (1 << 23))


def gumbel_from_index(index: jax.Array, key0: jax.Array, key1: jax.Array) -> jax.Array:
    """Gumbel noise (float32) of vocabulary entries `index` (uint32) at position key
    `(key0, key1)`; all three broadcast."""
    return -jnp.log(-jnp.log(uniform_from_hash(position_hash(index, key0, key1))))


def gumbel_noise(keys_B2: jax.Array, vocab: int) -> jax.Array:
    """Noise `[B, V]` for B position keys (uint32 `[B, 2]`)."""
    index_1V = jnp.arange(vocab, dtype=jnp.uint32)[None, :]
    return gumbel_from_index(index_1V, keys_B2[:, :1], keys_B2[:, 1:])


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


def process_logits(logits_BV: jax.Array, temperature_B: jax.Array, top_k_B: jax.Array,
                   top_p_B: jax.Array) -> jax.Array:
    """Temperature, top-k (0 = off), top-p (1 = off): the sampling distribution's logits."""
    logits_BV = logits_BV.astype(jnp.float32)
    t_B1 = temperature_B[:, None]
    scaled_BV = logits_BV / jnp.where(t_B1 > 0, t_B1, 1.0)
    needs_filter = jnp.any(top_k_B > 0) | jnp.any(top_p_B < 1.0)
    return jax.lax.cond(needs_filter, _filter_top_k_top_p, lambda x, *_: x,
                        scaled_BV, top_k_B, top_p_B)


def sample_reference(logits_BV: jax.Array, temperature_B: jax.Array, top_k_B: jax.Array,
                     top_p_B: jax.Array, keys_B2: jax.Array):
    """`(tokens_B, logprobs_B, sample_logprobs_B)`: the position-keyed sample of each row,
    its log-prob under softmax(logits) and under the processed distribution (0 if greedy).
    Temperature 0 is greedy: argmax of the raw logits."""
    logits_BV = logits_BV.astype(jnp.float32)
    processed_BV = process_logits(logits_BV, temperature_B, top_k_B, top_p_B)
    noise_BV = gumbel_noise(keys_B2, logits_BV.shape[-1])
    greedy_B = temperature_B <= 0
    tokens_B = jnp.where(greedy_B, jnp.argmax(logits_BV, -1),
                         jnp.argmax(processed_BV + noise_BV, -1)).astype(jnp.int32)
    # logit[token] - logsumexp(logits): one reduction each, no [B, V] log-softmax array.
    logprob = lambda x_BV: (jnp.take_along_axis(x_BV, tokens_B[:, None], -1)[:, 0]  # noqa: E731
                            - jax.nn.logsumexp(x_BV, axis=-1))
    sample_logprobs_B = jnp.where(greedy_B, 0.0, logprob(processed_BV))
    return tokens_B, logprob(logits_BV), sample_logprobs_B
