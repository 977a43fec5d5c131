"""The flash-attention step and the integer helpers that the Triton and Mosaic kernels share."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kernels.ragged_attention.reference import NEG


def dot_precision(dtype):
    # Triton's default for a float32 dot is tf32; float32 must match the reference to 1e-5.
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT


def online_softmax_step(carry, scores_RS, valid_RS, v_SD):
    """One key block of flash attention: rescale the running (out, max, sum) and add."""
    o_RD, m_R1, l_R1 = carry
    m_new_R1 = jnp.maximum(m_R1, jnp.max(jnp.where(valid_RS, scores_RS, NEG), axis=1,
                                         keepdims=True))
    # Zero invalid weights explicitly: while a row has seen no valid key, m_new is NEG and
    # exp(NEG - m_new) would be 1.
    p_RS = jnp.where(valid_RS, jnp.exp(scores_RS - m_new_R1), 0.0)
    correction_R1 = jnp.exp(m_R1 - m_new_R1)
    l_R1 = correction_R1 * l_R1 + jnp.sum(p_RS, axis=1, keepdims=True)
    pv_RD = jax.lax.dot(p_RS.astype(v_SD.dtype), v_SD, precision=dot_precision(v_SD.dtype),
                        preferred_element_type=jnp.float32)
    return correction_R1 * o_RD + pv_RD, m_new_R1, l_R1


def scores(q_RD, k_SD):
    dims = (((1,), (1,)), ((), ()))
    s_RS = jax.lax.dot_general(q_RD, k_SD, dims, precision=dot_precision(k_SD.dtype),
                               preferred_element_type=jnp.float32)
    return s_RS / math.sqrt(q_RD.shape[-1])


def div(a, b):
    """Integer division of non-negative int32s; `//` would add sign fix-ups that Mosaic can
    lower only for a known TPU generation."""
    return jax.lax.div(a, jnp.asarray(b, jnp.int32))


def cdiv(a, b):
    return div(a + b - 1, b)


def causal_RS(slot_1S, q_slot, rows: int, group: int):
    """Tile row r holds token t = r // G (rows are t-major), which sees slot s iff
    s <= q_slot + t, i.e. r >= (s - q_slot) * G: no vector division. Pad rows (t >= T) see
    every slot up to the row's end, like the last token."""
    row_R1 = jax.lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
    return row_R1 >= (slot_1S - q_slot) * group
