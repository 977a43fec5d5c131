"""The GPU (Triton) ragged decode-attention kernel, flash-decoding over each row's valid slots.

A program per (row, kv head, split) takes the `G = H / H_kv` query heads of its kv head times
the T tokens as one `[R, D]` tile (R = G*T padded to a power of two, at least 16, for
`tl.dot`), walks its share of the row's key blocks from `kv_start` up to the row's end
`q_slot + T` with masked loads at both ragged ends, keeps an online softmax and writes an
unnormalised partial (out, max, sum). A small jnp combine merges the splits. Splits divide
each row's own valid range, so a long row and a short row in one batch both spread over the
same number of programs.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.ragged_attention.common import causal_RS, cdiv, div, online_softmax_step, scores
from kernels.ragged_attention.reference import NEG


def _triton_kernel(q_slot_ref, kv_start_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *,
                   block_s: int, group: int, num_tokens: int, max_len: int):
    rows, d = q_ref.shape
    q_slot, kv_start = q_slot_ref[()], kv_start_ref[()]
    end = jnp.minimum(q_slot + num_tokens, max_len)  # writes past S_max were dropped
    first_blk = div(kv_start, block_s)
    num_blk = jnp.maximum(cdiv(end, block_s) - first_blk, 0)
    per_split = cdiv(num_blk, pl.num_programs(2))
    lo = first_blk + pl.program_id(2) * per_split
    hi = jnp.minimum(lo + per_split, first_blk + num_blk)

    q_RD = q_ref[...]

    def body(blk, carry):
        slot_S = blk * block_s + jnp.arange(block_s, dtype=jnp.int32)
        load_S = (slot_S >= kv_start) & (slot_S < end)
        k_SD = plgpu.load(k_ref.at[pl.ds(blk * block_s, block_s), :], mask=load_S[:, None],
                          other=0.0)
        v_SD = plgpu.load(v_ref.at[pl.ds(blk * block_s, block_s), :], mask=load_S[:, None],
                          other=0.0)
        valid_RS = load_S[None, :] & causal_RS(slot_S[None, :], q_slot, rows, group)
        return online_softmax_step(carry, scores(q_RD, k_SD), valid_RS, v_SD)

    init = (jnp.zeros((rows, d), jnp.float32), jnp.full((rows, 1), NEG, jnp.float32),
            jnp.zeros((rows, 1), jnp.float32))
    o_ref[...], m_ref[...], l_ref[...] = jax.lax.fori_loop(lo, hi, body, init)


def _num_splits(batch: int, kv_heads: int, rows: int, max_len: int) -> int:
    """About 4 programs per SM of a 132-SM Hopper, to keep enough loads in flight; but each
    split writes and the combine reads an [R, D] float32 partial, so a split should cover at
    least 16*R slots (partials then cost at most ~1/4 of the cache bytes of a half-full row)."""
    return max(1, min(pl.cdiv(528, batch * kv_heads), max_len // (16 * rows)))


def _combine_splits(o_BKNRD, m_BKNR1, l_BKNR1):
    w_BKNR1 = jnp.exp(m_BKNR1 - jnp.max(m_BKNR1, axis=2, keepdims=True))
    l_BKR1 = jnp.sum(w_BKNR1 * l_BKNR1, axis=2)
    o_BKRD = jnp.sum(w_BKNR1 * o_BKNRD, axis=2)
    return o_BKRD / jnp.where(l_BKR1 > 0, l_BKR1, 1.0)


def triton_attention(q_BKRD, k_BKSD, v_BKSD, q_slot_B, kv_start_B, *, group, num_tokens,
                     block_s, num_splits, interpret):
    """float32 `o_BKRD` of the [R, D] query tiles; `num_splits` None: `_num_splits`."""
    b, kv, rows, d = q_BKRD.shape
    s_max = k_BKSD.shape[2]
    n = num_splits or _num_splits(b, kv, rows, s_max)
    kernel = functools.partial(_triton_kernel, block_s=block_s, group=group,
                               num_tokens=num_tokens, max_len=s_max)
    scalar = pl.BlockSpec((None,), lambda i, h, j: (i,))
    cache = pl.BlockSpec((None, None, s_max, d), lambda i, h, j: (i, h, 0, 0))
    o, m, l = pl.pallas_call(
        kernel, grid=(b, kv, n),
        in_specs=[scalar, scalar, pl.BlockSpec((None, None, rows, d), lambda i, h, j: (i, h, 0, 0)),
                  cache, cache],
        out_specs=[pl.BlockSpec((None, None, None, rows, w), lambda i, h, j: (i, h, j, 0, 0))
                   for w in (d, 1, 1)],
        out_shape=[jax.ShapeDtypeStruct((b, kv, n, rows, w), jnp.float32) for w in (d, 1, 1)],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret, name="ragged_attention",
    )(q_slot_B, kv_start_B, q_BKRD, k_BKSD, v_BKSD)
    return _combine_splits(o, m, l)
