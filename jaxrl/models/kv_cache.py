"""KV cache with per-row lengths.

Each layer keeps keys and values as `[B, H_kv, S_max, D]` (heads before slots, so the
attention matmuls batch over adjacent (B, H_kv) dims and read the cache without a
transposing copy each step). Row `b` holds valid entries in
slots `[starts_B[b], lengths_B[b])`: `starts` skips left padding, `lengths` is where the
next token is written. Appending `T` tokens writes slots `lengths .. lengths+T-1` of each
row; rolling a row back (rejected draft tokens, right-padded prompts) is just a smaller
`lengths`, since attention never reads slots at or past it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.models.config import ModelConfig


@struct.dataclass
class KVCache:
    k: tuple[jax.Array, ...]  # per layer [B, K, S, D]
    v: tuple[jax.Array, ...]
    lengths_B: jax.Array  # int32: next write slot == number of slots used
    starts_B: jax.Array  # int32: first valid slot (left padding before it)

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def positions(self, num_new: int) -> jax.Array:
        """RoPE positions `[B, T]` of the next `num_new` tokens (slot minus left padding)."""
        return (self.lengths_B - self.starts_B)[:, None] + jnp.arange(num_new, dtype=jnp.int32)

    def write(self, layer: int, k_BTKD: jax.Array, v_BTKD: jax.Array) -> "KVCache":
        """Writes new keys/values at each row's own offset; slots past S_max are dropped."""
        b, t, kv, _ = k_BTKD.shape
        slots_B1T = (self.lengths_B[:, None] + jnp.arange(t, dtype=jnp.int32))[:, None, :]
        rows_B11 = jnp.arange(b)[:, None, None]
        heads_1K1 = jnp.arange(kv)[None, :, None]
        put = lambda cache_BKSD, new_BTKD: cache_BKSD.at[rows_B11, heads_1K1, slots_B1T].set(  # noqa: E731
            new_BTKD.transpose(0, 2, 1, 3).astype(cache_BKSD.dtype), mode="drop")
        k, v = put(self.k[layer], k_BTKD), put(self.v[layer], v_BTKD)
        return self.replace(k=self.k[:layer] + (k,) + self.k[layer + 1:],
                            v=self.v[:layer] + (v,) + self.v[layer + 1:])

    def advance(self, num_new_B: jax.Array | int) -> "KVCache":
        return self.replace(lengths_B=self.lengths_B + num_new_B)


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None,
               starts_B: jax.Array | None = None) -> KVCache:
    dtype = dtype or config.jnp_dtype
    shape = (batch, config.num_kv_heads, max_len, config.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    zeros_v = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    starts = jnp.zeros((batch,), jnp.int32) if starts_B is None else starts_B.astype(jnp.int32)
    return KVCache(k=zeros, v=zeros_v, lengths_B=jnp.zeros((batch,), jnp.int32), starts_B=starts)


def constrain(cache: KVCache, layout) -> KVCache:
    """Inside jit: the cache's rows over the batch axes and its KV heads by their rule
    (`sharding.Layout`); a cache made inside a step is otherwise XLA's to place, and it
    replicates what nothing forces it to split."""
    kv = lambda x: jax.lax.with_sharding_constraint(  # noqa: E731
        x, layout.sharding(("batch", "kv_heads", None, "head_dim"), x.shape))
    return cache.replace(k=tuple(map(kv, cache.k)), v=tuple(map(kv, cache.v)),
                         lengths_B=layout.rows(cache.lengths_B),
                         starts_B=layout.rows(cache.starts_B))
