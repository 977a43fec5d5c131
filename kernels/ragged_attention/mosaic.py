"""The TPU (Mosaic) ragged decode-attention kernel.

The grid is (row, kv head, key block), the last axis sequential with the softmax state in
VMEM scratch. The row lengths arrive by scalar prefetch; the key block index map clamps to
the row's valid blocks, so the steps past a row's end revisit the block already in VMEM and
copy nothing, and `pl.when` skips their arithmetic. No splits: a TPU core walks the grid in
order, and the (row, head) axes are split across cores.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.ragged_attention.common import causal_RS, cdiv, div, online_softmax_step, scores
from kernels.ragged_attention.reference import NEG


def _mosaic_kernel(q_slot_ref, kv_start_ref, q_ref, k_ref, v_ref, o_ref, o_acc, m_acc, l_acc,
                   *, block_s: int, group: int, num_tokens: int, max_len: int):
    i, j = pl.program_id(0), pl.program_id(2)
    rows = q_ref.shape[0]
    q_slot, kv_start = q_slot_ref[i], kv_start_ref[i]
    end = jnp.minimum(q_slot + num_tokens, max_len)
    blk = div(kv_start, block_s) + j

    @pl.when(j == 0)
    def _():
        o_acc[...] = jnp.zeros_like(o_acc)
        m_acc[...] = jnp.full_like(m_acc, NEG)
        l_acc[...] = jnp.zeros_like(l_acc)

    @pl.when(blk * block_s < end)
    def _():
        def loadable(shape, dim):
            slot = blk * block_s + jax.lax.broadcasted_iota(jnp.int32, shape, dim)
            return slot, (slot >= kv_start) & (slot < end)

        slot_1S, load_1S = loadable((1, block_s), 1)
        valid_RS = load_1S & causal_RS(slot_1S, q_slot, rows, group)
        # Slots past S_max in a partial last block hold whatever was in VMEM: 0 * NaN is NaN.
        v_SD = jnp.where(loadable((block_s, 1), 0)[1], v_ref[...], 0)
        carry = (o_acc[...], m_acc[...], l_acc[...])
        o_acc[...], m_acc[...], l_acc[...] = online_softmax_step(
            carry, scores(q_ref[...], k_ref[...]), valid_RS, v_SD)

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
        l_R1 = l_acc[...]
        o_ref[...] = (o_acc[...] / jnp.where(l_R1 > 0, l_R1, 1.0)).astype(o_ref.dtype)


def mosaic_attention(q_BKRD, k_BKSD, v_BKSD, q_slot_B, kv_start_B, *, group, num_tokens,
                     block_s, interpret):
    """float32 `o_BKRD` of the [R, D] query tiles."""
    b, kv, rows, d = q_BKRD.shape
    s_max = k_BKSD.shape[2]
    block_s = min(block_s, s_max)
    num_blk = pl.cdiv(s_max, block_s)

    def kv_block(i, h, j, q_slot_B, kv_start_B):
        # Steps past the row's last block keep its index: the pipeline then copies nothing.
        end = jnp.minimum(q_slot_B[i] + num_tokens, s_max)
        first = div(kv_start_B[i], block_s)
        last = jnp.maximum(cdiv(end, block_s) - 1, first)
        return i, h, jnp.minimum(first + j, last), 0

    tile = pl.BlockSpec((None, None, rows, d), lambda i, h, j, *_: (i, h, 0, 0))
    cache = pl.BlockSpec((None, None, block_s, d), kv_block)
    kernel = functools.partial(_mosaic_kernel, block_s=block_s, group=group,
                               num_tokens=num_tokens, max_len=s_max)
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(b, kv, num_blk), in_specs=[tile, cache, cache],
            out_specs=tile,
            scratch_shapes=[pltpu.VMEM((rows, d), jnp.float32),
                            pltpu.VMEM((rows, 1), jnp.float32),
                            pltpu.VMEM((rows, 1), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct((b, kv, rows, d), jnp.float32),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret, name="ragged_attention",
    )(q_slot_B, kv_start_B, q_BKRD, k_BKSD, v_BKSD)
