"""Packed update rows: the real tokens of M prompt+completion rows laid end to end in R < M
rows of the same length T = L + N, so that the forward's FLOPs go to real tokens.

    layout = pack_layout(prompt_lengths_M + completion_lengths_M, rows=R, row_len=T)
    tokens_RT, segments_RT, positions_RT = pack_tokens(layout, prompts_ML, plen_M, comp_MN, clen_M)
    x_MN = unpack(layout, x_RT, plen_M, n)  # the value at each completion token's predictor

A sequence's real tokens (its prompt's, then its completion's) are one segment: it attends
only within itself (causal; `Decoder(segment_ids_BT=...)`), and its positions count its real
tokens from 0, exactly as the unpacked row's do (rl/logprobs.py), so each token's log-prob is
the same function of the params. The layout is static: R rows of T slots, filled first-fit
in order of decreasing length inside jit; `layout.fits` is False when some sequence found no
room, and the caller then takes the unpacked forward (rl/logprobs.py).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

PACKINGS = ("none", "segments")


@struct.dataclass
class PackLayout:
    row_M: jax.Array  # the packed row that holds sequence m
    start_M: jax.Array  # its first slot there
    fits: jax.Array  # bool: every sequence found room
    row_len: int = struct.field(pytree_node=False)
    rows: int = struct.field(pytree_node=False)


def packed_rows(m: int, frac: float) -> int:
    """R for a minibatch of `m` rows at `rl.pack_rows_frac = frac` (host side, static)."""
    return max(1, math.ceil(m * frac))


def pack_layout(lengths_M: jax.Array, *, rows: int, row_len: int) -> PackLayout:
    """First-fit decreasing: longest sequence first, each into the first row with room."""
    order = jnp.argsort(-lengths_M, stable=True)

    def place(fill_R, m):
        length = lengths_M[m]
        room_R = fill_R + length <= row_len
        r = jnp.argmax(room_R)
        ok = room_R[r]
        return fill_R.at[r].add(jnp.where(ok, length, 0)), (r, fill_R[r], ok)

    _, (row_sorted, start_sorted, ok_sorted) = jax.lax.scan(
        place, jnp.zeros(rows, lengths_M.dtype), order)
    # Back from sorted order to row order.
    row_M = jnp.zeros_like(row_sorted).at[order].set(row_sorted)
    start_M = jnp.zeros_like(start_sorted).at[order].set(start_sorted)
    return PackLayout(row_M, start_M, ok_sorted.all(), row_len, rows)


def pack_tokens(layout: PackLayout, prompts_ML, prompt_lengths_M, completions_MN,
                completion_lengths_M):
    """`(tokens_RT, segments_RT, positions_RT)`: sequence m is segment m + 1 (0 = empty slot,
    token 0 at position 0) and its k-th real token sits at slot `start_m + k`."""
    m, l = prompts_ML.shape
    n = completions_MN.shape[1]
    tokens_MT = jnp.concatenate([prompts_ML, completions_MN], axis=1)
    k_T = jnp.arange(l + n)
    # The k-th real token of row m: prompt token k, or completion token k - plen.
    is_prompt_MT = k_T[None] < prompt_lengths_M[:, None]
    src_MT = jnp.where(is_prompt_MT, k_T[None], l + k_T[None] - prompt_lengths_M[:, None])
    real_MT = k_T[None] < (prompt_lengths_M + completion_lengths_M)[:, None]
    real_tokens_MT = jnp.take_along_axis(tokens_MT, jnp.clip(src_MT, 0, l + n - 1), axis=1)
    row_MT = jnp.broadcast_to(layout.row_M[:, None], real_MT.shape)
    slot_MT = jnp.where(real_MT, layout.start_M[:, None] + k_T[None], layout.row_len)
    shape = (layout.rows, layout.row_len)

    def scatter(values_MT):
        return jnp.zeros(shape, jnp.int32).at[row_MT, slot_MT].set(
            values_MT.astype(jnp.int32), mode="drop")
    segment_MT = jnp.broadcast_to(jnp.arange(1, m + 1)[:, None], real_MT.shape)
    position_MT = jnp.broadcast_to(k_T, real_MT.shape)
    return scatter(real_tokens_MT), scatter(segment_MT), scatter(position_MT)


def unpack(layout: PackLayout, x_RT: jax.Array, prompt_lengths_M, n: int) -> jax.Array:
    """`[M, N]`: at (m, i) the value at the slot that predicts completion token i (the last
    prompt token for i = 0, completion token i - 1 after). Slots past a completion's end
    hold another slot's value: the caller masks them, as it masks unpacked padding."""
    slot_MN = jnp.clip(layout.start_M[:, None] + prompt_lengths_M[:, None] - 1 + jnp.arange(n),
                       0, layout.row_len - 1)
    return x_RT[layout.row_M[:, None], slot_MN]
