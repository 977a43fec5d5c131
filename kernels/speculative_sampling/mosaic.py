"""The TPU (Mosaic) speculative-sampling kernels: `_mosaic_sample_kernel` and
`_mosaic_count_kernel`, the Triton kernels' passes laid out for a TPU core, which walks its
grid in order with vector (not scalar) transcendentals:

- The [B*K, V] logits are read in place as (rows, `block_v`) blocks: rows = 8 sublanes for
  float32, 16 for bfloat16 (all rows if fewer), `block_v` a multiple of 128 lanes (8192 by
  default). The grid is (row block, vocabulary block), rows "parallel", vocabulary
  "arbitrary": no splits, each row block walks its vocabulary in order, and the outputs'
  block stays put along it, so they carry the per-row state as [rows, 1] vectors (online
  max and sum-exp, raw and processed; best `processed + noise` and its index). Partial last
  blocks are read as they are and the vocabulary tail is masked with an iota compare on the
  whole block: padding V or B*K would copy the logits, and no load is masked.
- Per-row settings (temperature, threshold, the two key words) are [rows, 1] VMEM columns,
  not scalar prefetch: they are operands of vector arithmetic across the block's rows.
  Scalar prefetch carries per-row-block flags for the scalar branches: any row sampled
  (else the block only takes the greedy argmax), any row whose processed logits differ
  from the raw ones (else it shares the raw sum-exp), and for counting, any row still
  bisecting (else the block's index map stays on its first vocabulary block, so nothing
  is copied, and `pl.when` skips the work).
- The noise is `gumbel_from_index` on the [rows, C] block, behind the same
  `common.gumbel_upper_bound`, decided once per block: its logs run when any sampled row's
  bound reaches that row's best so far. With 8 or 16 rows a block, that skips fewer logs
  than Triton's one-row tiles; how many, and whether the bound pays for itself on a TPU, is
  unmeasured. Ties: within a block the lowest index among the maxima (an int32 min, which
  Mosaic reduces), across blocks a later one wins only if strictly larger.
- Top-k/top-p use the same `common.thresholds`, with `_mosaic_count_kernel` as the
  counting pass: one [rows, C] mask per candidate key, int32 counts and float32 masses
  accumulated in the outputs as per-candidate [rows, 1] columns.

What was checked: these kernels against the reference in interpret mode on CPU (tokens
equal, log-probs within 1e-5, on ragged shapes, greedy, top-k, top-p, ties), and
`jax.export` for ("tpu",), which runs Pallas's lowering to the Mosaic dialect. What was not:
Mosaic's own compiler (canonicalization, layout inference and the TPU backend run only on
a TPU host) and any run on a TPU, for correctness or speed; the block sizes are guesses.
Bit-equal tokens there need Mosaic's float32 division and log to round as XLA's do on that
TPU (the hash's float conversion goes through int32, which Mosaic's canonicalizer takes).
Until someone runs it there, `speculative_sample(impl="auto")` keeps TPUs on the reference;
`impl="pallas"` (or `speculative_sample_pallas`) selects these kernels.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.sampling import gumbel_from_index, position_hash
from kernels.speculative_sampling.common import (gumbel_upper_bound, online_logsumexp,
                                                 only_active, order_key)

DTYPES = (jnp.float32, jnp.bfloat16)  # the float types a TPU computes in
BLOCK_V = 8192  # default vocabulary block: a guess, never timed on a TPU


def _mosaic_tile(logits_ref, j, vocab):
    """Vocabulary block j of the row block as float32 [rows, C] with its indices [1, C]; -inf
    past the vocabulary, where a partial last block holds whatever was in VMEM."""
    block_v = logits_ref.shape[1]
    index_1C = j * block_v + jax.lax.broadcasted_iota(jnp.int32, (1, block_v), 1)
    x_RC = logits_ref[...].astype(jnp.float32)
    if vocab % block_v:
        x_RC = jnp.where(index_1C < vocab, x_RC, -jnp.inf)
    return index_1C, x_RC


def _mosaic_sample_kernel(sampled_G, processed_G, t_ref, threshold_ref, key0_ref, key1_ref,
                          logits_ref, m_raw_ref, l_raw_ref, m_proc_ref, l_proc_ref, best_ref,
                          best_index_ref, *, vocab):
    """One (row block, vocabulary block) step of `triton._sample_kernel`'s pass: rows are
    sublanes, per-row settings and state are [rows, 1] columns, and the outputs, whose block
    stays put along the vocabulary axis, carry the state from step to step."""
    i, j = pl.program_id(0), pl.program_id(1)

    @pl.when(j == 0)
    def _():
        for ref in (m_raw_ref, m_proc_ref, best_ref):
            ref[...] = jnp.full(ref.shape, -jnp.inf, jnp.float32)
        for ref in (l_raw_ref, l_proc_ref, best_index_ref):
            ref[...] = jnp.zeros(ref.shape, ref.dtype)

    index_1C, x_RC = _mosaic_tile(logits_ref, j, vocab)
    t_R1 = t_ref[...]
    greedy_R1 = t_R1 <= 0
    m_raw_R1, l_raw_R1 = online_logsumexp(m_raw_ref[...], l_raw_ref[...], x_RC)
    m_raw_ref[...], l_raw_ref[...] = m_raw_R1, l_raw_R1

    def processed():  # greedy rows' processed values are never used: scale them by 1
        s_RC = x_RC / jnp.where(greedy_R1, 1.0, t_R1)
        return jnp.where(s_RC >= threshold_ref[...], s_RC, -jnp.inf)

    # Per-block flags from scalar prefetch, as in `triton._sample_kernel` per row: a block
    # whose rows all have processed == raw shares the raw sum-exp; one with no sampled row is
    # greedy.
    any_processed = processed_G[i] != 0
    p_RC = jax.lax.cond(any_processed, processed, lambda: x_RC)
    m_proc_ref[...], l_proc_ref[...] = jax.lax.cond(
        any_processed, lambda: online_logsumexp(m_proc_ref[...], l_proc_ref[...], p_RC),
        lambda: (m_raw_R1, l_raw_R1))
    best_R1 = best_ref[...]

    def sampled():
        index_u_1C = index_1C.astype(jnp.uint32)
        key0_R1, key1_R1 = key0_ref[...], key1_ref[...]
        bound_RC = p_RC + gumbel_upper_bound(position_hash(index_u_1C, key0_R1, key1_R1))
        # One branch for the whole block: its logs run when any sampled row can improve.
        reach = jnp.any((jnp.max(bound_RC, axis=1, keepdims=True) >= best_R1) & ~greedy_R1)
        exact = lambda: jnp.where(  # noqa: E731
            p_RC == -jnp.inf, -jnp.inf, p_RC + gumbel_from_index(index_u_1C, key0_R1, key1_R1))
        noisy_RC = jax.lax.cond(reach, exact, lambda: jnp.full_like(p_RC, -jnp.inf))
        return jnp.where(greedy_R1, x_RC, noisy_RC)

    z_RC = jax.lax.cond(sampled_G[i] != 0, sampled, lambda: x_RC)
    # The first maximum of the block, by a min over indices: Mosaic reduces int32 with
    # min/max/add, and a later block wins only if strictly larger, as in
    # `triton._sample_kernel`.
    z_R1 = jnp.max(z_RC, axis=1, keepdims=True)
    first_R1 = jnp.min(jnp.where(z_RC == z_R1, index_1C, jnp.iinfo(jnp.int32).max), axis=1,
                       keepdims=True)
    better_R1 = z_R1 > best_R1
    best_ref[...] = jnp.where(better_R1, z_R1, best_R1)
    best_index_ref[...] = jnp.where(better_R1, first_R1, best_index_ref[...])


def _mosaic_count_kernel(active_G, t_ref, shift_ref, candidates_ref, logits_ref, count_ref,
                         mass_ref, *, vocab, with_mass):
    """`triton._count_kernel` on a (row block, vocabulary block): candidate c's column
    [rows, 1] is candidates_ref[c], and count_ref[c] / mass_ref[c] accumulate along the
    vocabulary axis. Blocks with no active row skip the work (and their index map, the
    copies)."""
    i, j = pl.program_id(0), pl.program_id(1)

    @pl.when(j == 0)
    def _():
        count_ref[...] = jnp.zeros(count_ref.shape, count_ref.dtype)
        mass_ref[...] = jnp.zeros(mass_ref.shape, mass_ref.dtype)

    @pl.when(active_G[i] != 0)
    def _():
        _, x_RC = _mosaic_tile(logits_ref, j, vocab)
        s_RC = x_RC / t_ref[...]
        key_RC = order_key(s_RC)
        if with_mass:
            e_RC = jnp.exp(s_RC - shift_ref[...])
        for c in range(candidates_ref.shape[0]):  # [rows, C] masks, one candidate at a time
            at_least_RC = key_RC >= candidates_ref[c]
            count_ref[c] += jnp.sum(at_least_RC.astype(jnp.int32), axis=1, keepdims=True)
            if with_mass:
                mass_ref[c] += jnp.sum(jnp.where(at_least_RC, e_RC, 0.0), axis=1, keepdims=True)


def _mosaic_layout(logits_RV, block_v: int):
    """(rows per block, vocabulary block, row blocks, vocabulary blocks). A float32 vreg has
    8 sublanes and bfloat16 packs 16; a dimension smaller than its block is one whole block.
    Partial last blocks are read as they are (the kernels mask the vocabulary tail, and rows
    past R only feed outputs that are cut off), so the logits are never copied to pad them."""
    r, v = logits_RV.shape
    rows = 8 * (4 // logits_RV.dtype.itemsize)
    rows = r if r <= rows else rows
    block_v = v if v <= block_v else block_v
    return rows, block_v, pl.cdiv(r, rows), pl.cdiv(v, block_v)


def _pad_rows(x_R, size: int, fill):
    return jnp.pad(x_R, (0, size - x_R.shape[0]), constant_values=fill)


def _any_per_block(flag_R, rows: int, blocks: int):
    return jnp.any(_pad_rows(flag_R, rows * blocks, False).reshape(blocks, rows),
                   axis=1).astype(jnp.int32)


def _mosaic_params():
    # Row blocks are independent; the vocabulary axis carries each block's state.
    return pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))


def sample_partials(logits_RV, t_R, threshold_R, keys_R2, *, block_v, interpret):
    """`triton.sample_partials`'s six [R, splits] partials with one split: [R, 1]."""
    r, v = logits_RV.shape
    rows, block_v, row_blocks, v_blocks = _mosaic_layout(logits_RV, block_v)
    size = rows * row_blocks
    sampled_R = t_R > 0
    processed_R = sampled_R & ((t_R != 1) | (threshold_R > -jnp.inf))
    # Pad rows are greedy, so that they never ask for the noise.
    columns = [_pad_rows(x_R, size, fill)[:, None] for x_R, fill in (
        (t_R, 0.0), (threshold_R, -jnp.inf), (keys_R2[:, 0], 0), (keys_R2[:, 1], 0))]
    column = pl.BlockSpec((rows, 1), lambda i, j, *_: (i, 0))
    state = jax.ShapeDtypeStruct((size, 1), jnp.float32)
    partials = pl.pallas_call(
        functools.partial(_mosaic_sample_kernel, vocab=v),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(row_blocks, v_blocks),
            in_specs=[column] * 4 + [pl.BlockSpec((rows, block_v), lambda i, j, *_: (i, j))],
            out_specs=[column] * 6),
        out_shape=[state] * 5 + [jax.ShapeDtypeStruct((size, 1), jnp.int32)],
        compiler_params=_mosaic_params(), interpret=interpret, name="speculative_sample_pass",
    )(_any_per_block(sampled_R, rows, row_blocks), _any_per_block(processed_R, rows, row_blocks),
      *columns, logits_RV)
    return [x[:r] for x in partials]


def counts(logits_RV, t_R, shift_R, candidates_RM, active_R, *, with_mass, block_v, interpret):
    """`triton.counts`' result from `_mosaic_count_kernel`."""
    r, v = logits_RV.shape
    m = candidates_RM.shape[1]
    rows, block_v, row_blocks, v_blocks = _mosaic_layout(logits_RV, block_v)
    size = rows * row_blocks
    candidates_MS1 = jnp.pad(candidates_RM.T, ((0, 0), (0, size - r)))[:, :, None]
    column = pl.BlockSpec((rows, 1), lambda i, j, *_: (i, 0))
    per_candidate = pl.BlockSpec((m, rows, 1), lambda i, j, *_: (0, i, 0))

    def logits_block(i, j, active_G):
        # Inactive row blocks stay on their first block: the pipeline then copies nothing.
        return i, jnp.where(active_G[i] != 0, j, 0)

    count_MS1, mass_MS1 = pl.pallas_call(
        functools.partial(_mosaic_count_kernel, vocab=v, with_mass=with_mass),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(row_blocks, v_blocks),
            in_specs=[column, column, per_candidate, pl.BlockSpec((rows, block_v), logits_block)],
            out_specs=[per_candidate] * 2),
        out_shape=[jax.ShapeDtypeStruct((m, size, 1), jnp.int32),
                   jax.ShapeDtypeStruct((m, size, 1), jnp.float32)],
        compiler_params=_mosaic_params(), interpret=interpret, name="speculative_count_pass",
    )(_any_per_block(active_R, rows, row_blocks), _pad_rows(t_R, size, 1.0)[:, None],
      _pad_rows(shift_R, size, 0.0)[:, None], candidates_MS1, logits_RV)
    return only_active(active_R, count_MS1[:, :r, 0].T, mass_MS1[:, :r, 0].T)
