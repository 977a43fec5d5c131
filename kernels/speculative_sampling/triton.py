"""The GPU (Triton) speculative-sampling kernels: `_sample_kernel` and `_count_kernel`.

- One pass over the vocabulary per row (row = one of the B*K positions). A grid of
  (row, vocabulary split) programs each walks its split in tiles of `block_v` and keeps an
  online max and sum-exp of the raw logits, the same of the processed (scaled, thresholded)
  logits, and the best `processed + noise` so far with its index. A jnp step merges the
  splits' partials ([rows, splits]) and gathers the winners' logits.
- The noise is computed behind `common.gumbel_upper_bound`, per one-row tile: with the
  split's running best, about ln(tiles per split) tiles per split need the exact noise.
- Ties resolve to the lowest index, as `jnp.argmax`: within a tile by `jnp.argmax`, across
  tiles and splits by keeping the earlier one unless a later one is strictly larger.
- Greedy rows (temperature 0) skip the noise and take the first argmax of the raw logits.
  Rows with temperature 1 and no top-k/top-p skip the division and share the raw sum-exp.
- Top-k/top-p thresholds come from `common.thresholds`, with `_count_kernel` as its
  counting pass.

On a GPU the kernel and the XLA reference compute the same integer hash and the same
libdevice logs. bench.kernel_sampling found the same tokens at every position of every batch it
ran on an H200 without top-k/top-p; its top-k/top-p mismatches were a reference bug fixed
since, not re-measured (BENCHMARKS.md).

Cost on a GPU: the noise rule, not memory, bounds the Triton kernel. Per vocabulary entry
it hashes (`kernels.sampling` counts the integer operations, which Hopper issues at half the
float rate), converts twice, takes one exp2 and a few maxima, about 70 float-instruction
slots, so an H200 runs it at ~30% of its HBM bandwidth on bf16 logits (bench.kernel_sampling).
The exact noise on every entry (two `logf`) would add some 35 more (estimated, not measured).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.sampling import gumbel_from_index, position_hash
from kernels.speculative_sampling.common import (gumbel_upper_bound, online_logsumexp,
                                                 only_active, order_key)

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)  # logits the kernels take
BLOCK_V = 1024  # default vocabulary tile
COUNT_BLOCK = 256  # tile of the counting kernel, whose [tile, candidates] masks cost registers
_TARGET_PROGRAMS = 2048  # enough (row, split) programs to fill a GPU's SMs several times


def _load_tile(logits_ref, r, offset, block, vocab):
    """Row r's logits [offset, offset + block) as float32, -inf past the vocabulary."""
    index_C = offset + jnp.arange(block, dtype=jnp.int32)
    x_C = plgpu.load(logits_ref.at[r, pl.ds(offset, block)], mask=index_C < vocab,
                     other=-jnp.inf)
    return index_C, x_C.astype(jnp.float32)


def _sample_kernel(logits_ref, temperature_ref, threshold_ref, key0_ref, key1_ref,
                   m_raw_ref, l_raw_ref, m_proc_ref, l_proc_ref, best_ref, best_index_ref, *,
                   vocab, block_v, tiles):
    r, j = pl.program_id(0), pl.program_id(1)
    t, threshold = temperature_ref[r], threshold_ref[r]
    key0, key1 = key0_ref[r], key1_ref[r]
    greedy = t <= 0
    # processed == raw: x / 1 is x, and no threshold; greedy rows never use processed.
    raw_only = greedy | ((t == 1) & (threshold == -jnp.inf))
    start = j * tiles * block_v

    def processed(x_C):
        s_C = x_C / t
        return jnp.where(s_C >= threshold, s_C, -jnp.inf)

    def tile(i, carry):
        m_raw, l_raw, m_proc, l_proc, best, best_index = carry
        offset = start + i * block_v
        index_C, x_C = _load_tile(logits_ref, r, offset, block_v, vocab)
        m_raw, l_raw = online_logsumexp(m_raw, l_raw, x_C)
        p_C = jax.lax.cond(raw_only, lambda: x_C, lambda: processed(x_C))
        m_proc, l_proc = jax.lax.cond(raw_only, lambda: (m_raw, l_raw),
                                      lambda: online_logsumexp(m_proc, l_proc, p_C))

        def keep_first_max(z_C):  # a later tile wins only if strictly larger
            z = jnp.max(z_C)
            better = z > best
            return (jnp.where(better, z, best),
                    jnp.where(better, offset + jnp.argmax(z_C).astype(jnp.int32), best_index))

        def sampled():
            index_u_C = index_C.astype(jnp.uint32)
            bound_C = p_C + gumbel_upper_bound(position_hash(index_u_C, key0, key1))
            # Dropped entries (p = -inf) never win, even where the noise is +inf.
            exact = lambda: keep_first_max(jnp.where(  # noqa: E731
                p_C == -jnp.inf, -jnp.inf, p_C + gumbel_from_index(index_u_C, key0, key1)))
            return jax.lax.cond(jnp.max(bound_C) >= best, exact, lambda: (best, best_index))

        best, best_index = jax.lax.cond(greedy, lambda: keep_first_max(x_C), sampled)
        return m_raw, l_raw, m_proc, l_proc, best, best_index

    neg_inf, zero = jnp.float32(-jnp.inf), jnp.float32(0.0)
    carry = jax.lax.fori_loop(0, tiles, tile, (neg_inf, zero, neg_inf, zero, neg_inf, start))
    for ref, value in zip((m_raw_ref, l_raw_ref, m_proc_ref, l_proc_ref, best_ref,
                           best_index_ref), carry):
        ref[r, j] = value


def _count_kernel(logits_ref, temperature_ref, shift_ref, active_ref, candidates_ref,
                  count_ref, mass_ref, *, vocab, block, tiles, with_mass):
    """Per candidate key c: how many scaled logits have key >= c, and their sum of
    exp(scaled - shift). Rows with active == 0 write nothing."""
    r, j = pl.program_id(0), pl.program_id(1)

    @pl.when(active_ref[r] != 0)
    def _():
        t, shift = temperature_ref[r], shift_ref[r]
        candidates_M = candidates_ref[r, :]
        start = j * tiles * block

        def tile(i, carry):
            count_M, mass_M = carry
            _, x_C = _load_tile(logits_ref, r, start + i * block, block, vocab)
            s_C = x_C / t
            at_least_CM = order_key(s_C)[:, None] >= candidates_M[None, :]
            count_M = count_M + jnp.sum(at_least_CM.astype(jnp.int32), axis=0)
            if with_mass:
                e_C = jnp.exp(s_C - shift)
                mass_M = mass_M + jnp.sum(jnp.where(at_least_CM, e_C[:, None], 0.0), axis=0)
            return count_M, mass_M

        m = candidates_M.shape[0]
        count_M, mass_M = jax.lax.fori_loop(
            0, tiles, tile, (jnp.zeros((m,), jnp.int32), jnp.zeros((m,), jnp.float32)))
        count_ref[r, j, :] = count_M
        mass_ref[r, j, :] = mass_M


def layout(rows: int, vocab: int, block_v: int, num_splits: int | None):
    """(splits, tiles per split): splits of whole tiles, enough programs to fill the GPU."""
    n_tiles = pl.cdiv(vocab, block_v)
    splits = num_splits or max(1, pl.cdiv(_TARGET_PROGRAMS, rows))
    tiles = pl.cdiv(n_tiles, min(max(splits, 1), n_tiles))
    return pl.cdiv(n_tiles, tiles), tiles


def _compiler_params(interpret):
    return None if interpret else plgpu.CompilerParams(num_warps=4, num_stages=3)


def sample_partials(logits_RV, t_R, threshold_R, keys_R2, *, block_v, splits, tiles, interpret):
    """`_sample_kernel`'s six [R, splits] partials: the raw and the processed (max, sum-exp),
    the best `processed + noise` and its index."""
    r, v = logits_RV.shape
    part = jax.ShapeDtypeStruct((r, splits), jnp.float32)
    kernel = functools.partial(_sample_kernel, vocab=v, block_v=block_v, tiles=tiles)
    return pl.pallas_call(
        kernel, grid=(r, splits),
        out_shape=[part] * 5 + [jax.ShapeDtypeStruct((r, splits), jnp.int32)],
        interpret=interpret, compiler_params=_compiler_params(interpret),
        name="speculative_sample_pass",
    )(logits_RV, t_R, threshold_R, keys_R2[:, 0], keys_R2[:, 1])


def counts(logits_RV, t_R, shift_R, candidates_RM, active_R, *, with_mass, splits, tiles,
           interpret):
    """Sums over splits of `_count_kernel`: (count_RM int32, mass_RM float32); rows that are
    not active get zeros."""
    r, v = logits_RV.shape
    m = candidates_RM.shape[1]
    kernel = functools.partial(_count_kernel, vocab=v, block=COUNT_BLOCK, tiles=tiles,
                               with_mass=with_mass)
    count_RSM, mass_RSM = pl.pallas_call(
        kernel, grid=(r, splits),
        out_shape=[jax.ShapeDtypeStruct((r, splits, m), jnp.int32),
                   jax.ShapeDtypeStruct((r, splits, m), jnp.float32)],
        interpret=interpret, compiler_params=_compiler_params(interpret),
        name="speculative_count_pass",
    )(logits_RV, t_R, shift_R, active_R.astype(jnp.int32), candidates_RM)
    return only_active(active_R, jnp.sum(count_RSM, axis=1), jnp.sum(mass_RSM, axis=1))
