"""Position-keyed sampling (ARCHITECTURE.md, invariant 1).

The token for sequence `uid` at completion position `t` is

    argmax(process(logits) + Gumbel(key(base_key, uid, t)))

where `process` is temperature, then top-k, then top-p, each a deterministic function of
the logits (the rule itself, noise included, is `kernels/sampling.py`). The noise depends only on `(base_key, uid, t)`, never on the batch a row sits
in, so plain decoding, speculative decoding, any batch size, row order or compaction all
pick the same token from the same logits. Temperature 0 means greedy (argmax of logits).

Top-k and top-p are defined by thresholds (keep every token whose scaled logit is at least
the threshold), so ties are kept and a kernel may find the same threshold by bisection.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from kernels import sampling as sampling_ref


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """`config.sampling` of the generate job."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"config.sampling.max_new_tokens must be >= 1, got "
                             f"{self.max_new_tokens}")
        check_sampling(self.temperature, self.top_k, self.top_p, "config.sampling.")


def check_sampling(temperature: float, top_k: int, top_p: float, prefix: str = "") -> None:
    """Errors name the field as `prefix + name` (e.g. 'config.rl.top_p')."""
    if not temperature >= 0:  # also rejects NaN
        raise ValueError(f"{prefix}temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"{prefix}top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"{prefix}top_p must be in (0, 1], got {top_p}")


@struct.dataclass
class SamplingParams:
    """Per-row sampling settings (arrays of shape [B])."""

    temperature_B: jax.Array  # float32; 0 = greedy
    top_k_B: jax.Array  # int32; 0 = off
    top_p_B: jax.Array  # float32; 1 = off

    @classmethod
    def make(cls, batch: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0) -> "SamplingParams":
        check_sampling(temperature, top_k, top_p)
        return cls(temperature_B=jnp.full((batch,), temperature, jnp.float32),
                   top_k_B=jnp.full((batch,), top_k, jnp.int32),
                   top_p_B=jnp.full((batch,), top_p, jnp.float32))

    def take(self, rows_B: jax.Array) -> "SamplingParams":
        return jax.tree.map(lambda x: x[rows_B], self)


def position_keys(base_key: jax.Array, uids_B: jax.Array, t_B: jax.Array) -> jax.Array:
    """The key of each (uid, t) as uint32 key data `[B, 2]`; a function of those two numbers
    alone."""
    key_of = lambda u, t: jax.random.key_data(  # noqa: E731
        jax.random.fold_in(jax.random.fold_in(base_key, u), t))
    return jax.vmap(key_of)(uids_B, t_B)


def gumbel_noise(base_key: jax.Array, uids_B: jax.Array, t_B: jax.Array, vocab: int) -> jax.Array:
    return sampling_ref.gumbel_noise(position_keys(base_key, uids_B, t_B), vocab)


def process_logits(logits_BV: jax.Array, params: SamplingParams) -> jax.Array:
    """Temperature, top-k, top-p: the logits of the sampling distribution (float32)."""
    return sampling_ref.process_logits(logits_BV, params.temperature_B, params.top_k_B,
                                       params.top_p_B)


@struct.dataclass
class Sample:
    tokens_B: jax.Array  # int32
    logprobs_B: jax.Array  # float32, under the raw model distribution (softmax of logits)
    sample_logprobs_B: jax.Array  # float32, under the processed distribution (0 when greedy)


def sample(logits_BV: jax.Array, params: SamplingParams, base_key: jax.Array,
           uids_B: jax.Array, t_B: jax.Array) -> Sample:
    """The position-keyed sample for each row, with its log-probs."""
    return Sample(*sampling_ref.sample_reference(
        logits_BV, params.temperature_B, params.top_k_B, params.top_p_B,
        position_keys(base_key, uids_B, t_B)))
