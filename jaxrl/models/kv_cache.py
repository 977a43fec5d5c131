"""KV cache with per-row lengths.

Keys and values per layer are `[B, H_kv, S_max, D]` (heads before slots, so the attention
matmuls batch over adjacent (B, H_kv) dims and read the cache without a transposing copy
each step): a tuple of Y such arrays, or, for a Decoder that scans its layers, one
`[Y, B, H_kv, S_max, D]` array (`stacked`), whose layer slices the scan writes in place.
The tuple is the default because XLA on a GPU copies the layer slice a stacked cache feeds
to attention: decode at batch 64 was 1.28x slower with one (BENCHMARKS.md).
Row `b` holds valid entries in slots `[starts_B[b], lengths_B[b])`: `starts` skips left
padding, `lengths` is where the next token is written. Appending `T` tokens writes slots
`lengths .. lengths+T-1` of each row; rolling a row back (rejected draft tokens,
right-padded prompts) is just a smaller `lengths`, since attention never reads slots at or
past it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.models.config import ModelConfig


@struct.dataclass
class KVCache:
    k: tuple[jax.Array, ...] | jax.Array  # Y x [B, K, S, D], or [Y, B, K, S, D] (stacked)
    v: tuple[jax.Array, ...] | jax.Array
    lengths_B: jax.Array  # int32: next write slot == number of slots used
    starts_B: jax.Array  # int32: first valid slot (left padding before it)

    @property
    def stacked(self) -> bool:
        return not isinstance(self.k, tuple)

    @property
    def max_len(self) -> int:
        return (self.k if self.stacked else self.k[0]).shape[-2]

    def positions(self, num_new: int) -> jax.Array:
        """RoPE positions `[B, T]` of the next `num_new` tokens (slot minus left padding)."""
        return (self.lengths_B - self.starts_B)[:, None] + jnp.arange(num_new, dtype=jnp.int32)

    def write(self, layer: int | jax.Array, k_BTKD: jax.Array, v_BTKD: jax.Array) -> "KVCache":
        """Writes new keys/values of `layer` at each row's own offset; slots past S_max are
        dropped. `layer` may be traced (a scan over the layers) when the cache is stacked."""
        b, t, kv, _ = k_BTKD.shape
        slots_B1T = (self.lengths_B[:, None] + jnp.arange(t, dtype=jnp.int32))[:, None, :]
        rows_B11 = jnp.arange(b)[:, None, None]
        heads_1K1 = jnp.arange(kv)[None, :, None]
        dtype = (self.k if self.stacked else self.k[0]).dtype

        def put(cache, new_BTKD):
            new_BKTD = new_BTKD.transpose(0, 2, 1, 3).astype(dtype)
            if self.stacked:
                return cache.at[layer, rows_B11, heads_1K1, slots_B1T].set(new_BKTD, mode="drop")
            one_BKSD = cache[layer].at[rows_B11, heads_1K1, slots_B1T].set(new_BKTD, mode="drop")
            return cache[:layer] + (one_BKSD,) + cache[layer + 1:]

        return self.replace(k=put(self.k, k_BTKD), v=put(self.v, v_BTKD))

    def take_rows(self, rows_R: jax.Array) -> "KVCache":
        """The cache of rows `rows_R` (in that order)."""
        take = (lambda a: a[:, rows_R]) if self.stacked else (lambda a: a[rows_R])
        return KVCache(jax.tree.map(take, self.k), jax.tree.map(take, self.v),
                       self.lengths_B[rows_R], self.starts_B[rows_R])

    def advance(self, num_new_B: jax.Array | int) -> "KVCache":
        return self.replace(lengths_B=self.lengths_B + num_new_B)


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None,
               starts_B: jax.Array | None = None, stacked: bool = False) -> KVCache:
    """An empty cache; `stacked` for a Decoder that scans its layers (`scan_layers`)."""
    dtype = dtype or config.jnp_dtype
    shape = (batch, config.num_kv_heads, max_len, config.head_dim)
    if stacked:
        k = jnp.zeros((config.num_layers, *shape), dtype)
        v = jnp.zeros((config.num_layers, *shape), dtype)
    else:
        k = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
        v = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    starts = jnp.zeros((batch,), jnp.int32) if starts_B is None else starts_B.astype(jnp.int32)
    return KVCache(k=k, v=v, lengths_B=jnp.zeros((batch,), jnp.int32), starts_B=starts)


def constrain(cache: KVCache, layout) -> KVCache:
    """Inside jit: the cache's rows over the batch axes and its KV heads by their rule
    (`sharding.Layout`); a cache made inside a step is otherwise XLA's to place, and it
    replicates what nothing forces it to split."""
    axes = ("batch", "kv_heads", None, "head_dim")
    axes = (None, *axes) if cache.stacked else axes
    kv = lambda x: jax.lax.with_sharding_constraint(x, layout.sharding(axes, x.shape))  # noqa: E731
    return cache.replace(k=jax.tree.map(kv, cache.k), v=jax.tree.map(kv, cache.v),
                         lengths_B=layout.rows(cache.lengths_B),
                         starts_B=layout.rows(cache.starts_B))
