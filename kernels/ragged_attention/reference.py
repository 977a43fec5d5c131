"""The ragged decode attention in plain jnp, and the decoder's attention it is built on.

`ragged_attention_reference` builds the ragged mask over all `S_max` slots and calls
`attend_reference`, the decoder's attention. It reads every slot of every row: a batch of
rows of very different lengths costs as much as if all were full. A query with no valid slot
(`kv_start > q_slot + t`, which the cache never produces) gets a uniform average over all
slots here, and zeros from the kernels.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NEG = -1e30  # finite, so a fully masked (padding) query row gives no NaN


def attend_reference(q_BTHD: jax.Array, k_BKSD: jax.Array, v_BKSD: jax.Array,
                     mask_BTS: jax.Array) -> jax.Array:
    """Grouped-query attention: softmax in float32, masked keys get zero weight."""
    b, t, h, d = q_BTHD.shape
    kv = k_BKSD.shape[1]
    q_BKGTD = q_BTHD.reshape(b, t, kv, h // kv, d).transpose(0, 2, 3, 1, 4)
    scores = jnp.einsum("bkgtd,bksd->bkgts", q_BKGTD, k_BKSD,
                        preferred_element_type=jnp.float32) / math.sqrt(d)
    scores = jnp.where(mask_BTS[:, None, None], scores, NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BKSD.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, v_BKSD)
    return out.reshape(b, t, h * d)


def ragged_mask(q_slot_B: jax.Array, kv_start_B: jax.Array, num_tokens: int,
                max_len: int) -> jax.Array:
    """`mask_BTS`: query t of row b sees slots kv_start..q_slot+t."""
    slot_11S = jnp.arange(max_len)[None, None, :]
    last_BT1 = (q_slot_B[:, None] + jnp.arange(num_tokens))[..., None]
    return (slot_11S >= kv_start_B[:, None, None]) & (slot_11S <= last_BT1)


def ragged_attention_reference(q_BTHD, k_BKSD, v_BKSD, q_slot_B, kv_start_B) -> jax.Array:
    """Reads all S_max slots of every row, masked to each query's valid range."""
    mask_BTS = ragged_mask(q_slot_B, kv_start_B, q_BTHD.shape[1], k_BKSD.shape[2])
    return attend_reference(q_BTHD, k_BKSD, v_BKSD, mask_BTS)
