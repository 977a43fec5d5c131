"""Speculative-decoding verification: the position-keyed sample at each of the K = D + 1
positions of a row, and how many of the row's D drafts match it.

    tokens_BK, accepted_B, logprobs_BK, sample_logprobs_BK = verify(
        logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B, top_p_B, keys_BK2)

`verify_reference` is `kernels.sampling.sample_reference` on the B*K rows plus the count.
`verify_pallas` computes the same tokens without a sort and without a [B, K, V] noise
array, with Triton on GPU and Mosaic on TPU (`backend`; CPU runs either in interpret mode).
The Triton kernels:

- One pass over the vocabulary per row (row = one of the B*K positions). A grid of
  (row, vocabulary split) programs each walks its split in tiles of `block_v` and keeps an
  online max and sum-exp of the raw logits, the same of the processed (scaled, thresholded)
  logits, and the best `processed + noise` so far with its index. A jnp step merges the
  splits' partials ([rows, splits]) and gathers the winners' logits.
- The noise is `gumbel_from_index` itself, evaluated in the kernel. Its two logs dominate
  the arithmetic, so each tile first bounds every entry's noise from the same integer hash
  with no transcendental (`_gumbel_upper_bound`: -log(-log u) <= -log(1 - u), and
  log2 w >= its float bits read as an integer, a chord of the concave log2) and computes the
  exact noise only when the tile's bound reaches the best value so far. The bound is
  rigorous, so the winner and its value are exactly the reference's; with the split's
  running best, about ln(tiles per split) tiles per split need the exact noise.
- Ties resolve to the lowest index, as `jnp.argmax`: within a tile by `jnp.argmax`, across
  tiles and splits by keeping the earlier one unless a later one is strictly larger.
- Greedy rows (temperature 0) skip the noise and take the first argmax of the raw logits.
  Rows with temperature 1 and no top-k/top-p skip the division and share the raw sum-exp.
- Top-k and top-p, only when some row uses them (`lax.cond`), set a per-row threshold on
  the scaled logits before that pass, as `kernels.sampling` defines them, by bisection on
  an order-preserving int32 key of the float values: each pass over the vocabulary counts,
  for `_CANDIDATES` candidate keys per row, the entries at or above each and their
  unnormalised mass, so a pass narrows the key interval 9-fold (about 11 passes for 32-bit
  keys). Top-k's threshold is the largest key with count >= k, which is exactly the k-th
  largest value. Top-p's is the largest key whose mass at or above it reaches
  top_p * (the top-k mass), which is the reference's last kept value in exact arithmetic;
  the reference sums its mass in sorted order in float32 and this sums per tile, so when
  the mass at a boundary lies within float rounding of top_p the two can keep a different
  number of tokens. The tests check that they agree on theirs.

Where the kernel does not apply, `verify_pallas` returns the reference's result instead of
failing: logits of a dtype the backend does not take (Triton: float32/bfloat16/float16;
Mosaic: float32/bfloat16, the float types a TPU computes in), or a platform the backend does
not lower for. On a GPU the kernel and the XLA reference compute the same integer hash
and the same libdevice logs, and bench/kernels.py found the same tokens at every position
of every batch it ran on an H200, except the reference's dropped-token picks below.

Cost on a GPU: the noise rule, not memory, bounds the Triton kernel. Per vocabulary entry
it hashes (two lowbias32 rounds: ~17 integer instructions, which Hopper issues at half the
float rate), converts twice, takes one exp2 and a few maxima, about 70 float-instruction
slots, so an H200 runs it at ~30% of its HBM bandwidth on bf16 logits (bench/kernels.py).
The exact noise on every entry (two `logf`) would add some 35 more (estimated, not measured).

The noise is finite (`uniform_from_hash` keeps u < 1), so the upper bound below is finite too.

TPU (Mosaic, `_mosaic_sample_kernel` and `_mosaic_count_kernel`): the same passes, laid out
for a TPU core, which walks its grid in order with vector (not scalar) transcendentals:

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
  `_gumbel_upper_bound`, decided once per block: its logs run when any sampled row's bound
  reaches that row's best so far. With 8 or 16 rows a block, that skips fewer logs than
  Triton's one-row tiles; how many, and whether the bound pays for itself on a TPU, is
  unmeasured. Ties: within a block the lowest index among the maxima (an int32 min, which
  Mosaic reduces), across blocks a later one wins only if strictly larger.
- Top-k/top-p use the same `_thresholds`/`_bisect`, with `_mosaic_count_kernel` as the
  counting pass: one [rows, C] mask per candidate key, int32 counts and float32 masses
  accumulated in the outputs as per-candidate [rows, 1] columns.

What was checked: the Mosaic kernels against the reference in interpret mode on CPU (tokens
equal, log-probs within 1e-5, on ragged shapes, greedy, top-k, top-p, ties), and
`jax.export` for ("tpu",), which runs Pallas's lowering to the Mosaic dialect. What was not:
Mosaic's own compiler (canonicalization, layout inference and the TPU backend run only on
a TPU host) and any run on a TPU, for correctness or speed; the block sizes are guesses.
Bit-equal tokens there need Mosaic's float32 division and log to round as XLA's do on that
TPU (the hash's float conversion goes through int32, which Mosaic's canonicalizer takes). Until
someone runs it there, `verify(impl="auto")` keeps TPUs on the reference; `impl="pallas"`
(or `verify_pallas`) selects the Mosaic kernel.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

from kernels.sampling import (gumbel_from_index, position_hash, sample_reference,
                              uniform_from_hash)

IMPLS = ("auto", "pallas", "reference")
BACKENDS = ("triton", "mosaic")
_KERNEL_DTYPES = {"triton": (jnp.float32, jnp.bfloat16, jnp.float16),
                  "mosaic": (jnp.float32, jnp.bfloat16)}
_PLATFORM = {"triton": "gpu", "mosaic": "tpu"}  # where each lowers; CPU interprets both
_BLOCK_V = {"triton": 1024, "mosaic": 8192}  # Mosaic's: a guess, never timed on a TPU
_TARGET_PROGRAMS = 2048  # enough (row, split) programs to fill a GPU's SMs several times
_CANDIDATES = 8  # threshold keys tested per row per bisection pass (a power of two)
_COUNT_BLOCK = 256  # tile of the counting kernel, whose [tile, candidates] masks cost registers
# _gumbel_upper_bound is exact math plus a few float32 roundings of at most ~1e-5 and the
# logs' own ulps: 1e-3 covers them many times over and loosens the test by nothing visible.
_BOUND_MARGIN = 1e-3
_LN2 = math.log(2.0)
_LOG2E = 1.0 / _LN2
_BIG = 3e38  # finite stand-in for +inf, so that -inf + _BIG stays -inf (not NaN)


# ------------------------------------------------------------------------------ reference

def accepted_count(tokens_BK: jax.Array, drafts_BD: jax.Array, num_drafts_B: jax.Array):
    """Leading drafts (of the first `num_drafts_B[b]`) equal to the sampled tokens."""
    d = drafts_BD.shape[1]
    match_BD = (jnp.arange(d)[None, :] < num_drafts_B[:, None]) & (drafts_BD == tokens_BK[:, :d])
    return jnp.sum(jnp.cumprod(match_BD.astype(jnp.int32), axis=1), axis=1).astype(jnp.int32)


def _check_shapes(logits_BKV, drafts_BD, keys_BK2):
    b, k, _ = logits_BKV.shape
    if drafts_BD.shape != (b, k - 1) or keys_BK2.shape != (b, k, 2):
        raise ValueError(f"logits {logits_BKV.shape}, drafts {drafts_BD.shape}, keys "
                         f"{keys_BK2.shape}: expected [B, K, V], [B, K-1] and [B, K, 2]")


def _per_position(x_B, k):
    return jnp.repeat(x_B, k)


def verify_reference(logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B, top_p_B,
                     keys_BK2):
    """K = D + 1 positions per row.
    logits_BKV: [B, K, V] float32 or bfloat16: position j's logits choose the token at position j.
    drafts_BD: int32 [B, D]: drafted tokens for positions 0..D-1; entries at j >= num_drafts_B[b]
      are ignored (may be -1).
    num_drafts_B: int32 [B] in [0, D].
    temperature_B float32 (0 = greedy = argmax of raw logits), top_k_B int32 (0 = off),
      top_p_B float32 (1 = off): per row, same for all K positions of the row.
    keys_BK2: uint32 [B, K, 2]: the position key of each position.
    Returns (tokens_BK int32, accepted_B int32, logprobs_BK float32, sample_logprobs_BK float32):
      tokens_BK[b, j] = the position-keyed sample at (b, j) = exactly
        kernels.sampling.sample_reference on that row's logits/settings/key;
      accepted_B[b] = number of leading j < num_drafts_B[b] with drafts_BD[b, j] == tokens_BK[b, j];
      logprobs_BK / sample_logprobs_BK = log-prob of tokens_BK under softmax(raw logits) / under
        the processed distribution (0 when greedy), as sample_reference returns.
    """
    _check_shapes(logits_BKV, drafts_BD, keys_BK2)
    b, k, v = logits_BKV.shape
    tokens_R, logprobs_R, sample_logprobs_R = sample_reference(
        logits_BKV.reshape(b * k, v), _per_position(temperature_B, k),
        _per_position(top_k_B, k), _per_position(top_p_B, k), keys_BK2.reshape(b * k, 2))
    tokens_BK = tokens_R.reshape(b, k)
    return (tokens_BK, accepted_count(tokens_BK, drafts_BD, num_drafts_B),
            logprobs_R.reshape(b, k), sample_logprobs_R.reshape(b, k))


# ------------------------------------------------------------------ elementwise pieces

def _gumbel_upper_bound(hash_C: jax.Array) -> jax.Array:
    """An upper bound on the noise that `gumbel_from_index` makes from this hash, without logs.

    With u as the reference computes it and w = 1 - u: -log u >= w, so the noise
    -log(-log u) <= -log w; and for w = 2^e * m (1 <= m < 2), log2 w >= e + m - 1 =
    bits(w) / 2^23 - 127, the chord of the concave log2 (slack at most 0.06). w >= 2**-24.
    """
    u_C = uniform_from_hash(hash_C)
    w_C = 1.0 - u_C
    bits_C = jax.lax.bitcast_convert_type(w_C, jnp.int32).astype(jnp.float32)
    bound_C = bits_C * (-_LN2 / (1 << 23)) + (127 * _LN2 + _BOUND_MARGIN)
    return bound_C


def _order_key(x: jax.Array) -> jax.Array:
    """int32 that orders like the float32 values (-0.0 and +0.0 share a key, as they compare)."""
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x), jnp.int32)
    return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _key_value(key: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(jnp.where(key < 0, key ^ 0x7FFFFFFF, key), jnp.float32)


def _online_logsumexp(m, l, x):
    """(max, sum exp(x - max)) after adding the tile x along its last axis; all -inf so far
    gives (-inf, 0). A 2-D tile's rows keep that axis ([rows, 1] state), to broadcast
    against it. exp2 of a scaled argument: libdevice's exp2f is the hardware ex2 (2 ulp), a
    few instructions less per vocabulary entry than expf."""
    keep = x.ndim > 1
    m_new = jnp.maximum(m, jnp.max(x, axis=-1, keepdims=keep))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    return m_new, (l * jnp.exp2((m - m_safe) * _LOG2E)
                   + jnp.sum(jnp.exp2((x - m_safe) * _LOG2E), axis=-1, keepdims=keep))


def _merge_logsumexp(m_RS, l_RS):
    m_R = jnp.max(m_RS, axis=1)
    m_safe = jnp.where(m_R == -jnp.inf, 0.0, m_R)
    return m_R + jnp.log(jnp.sum(l_RS * jnp.exp(m_RS - m_safe[:, None]), axis=1))


def _load_tile(logits_ref, r, offset, block, vocab):
    """Row r's logits [offset, offset + block) as float32, -inf past the vocabulary."""
    index_C = offset + jnp.arange(block, dtype=jnp.int32)
    x_C = plgpu.load(logits_ref.at[r, pl.ds(offset, block)], mask=index_C < vocab,
                     other=-jnp.inf)
    return index_C, x_C.astype(jnp.float32)


# ---------------------------------------------------------------- Triton kernels (GPU)

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
        m_raw, l_raw = _online_logsumexp(m_raw, l_raw, x_C)
        p_C = jax.lax.cond(raw_only, lambda: x_C, lambda: processed(x_C))
        m_proc, l_proc = jax.lax.cond(raw_only, lambda: (m_raw, l_raw),
                                      lambda: _online_logsumexp(m_proc, l_proc, p_C))

        def keep_first_max(z_C):  # a later tile wins only if strictly larger
            z = jnp.max(z_C)
            better = z > best
            return (jnp.where(better, z, best),
                    jnp.where(better, offset + jnp.argmax(z_C).astype(jnp.int32), best_index))

        def sampled():
            index_u_C = index_C.astype(jnp.uint32)
            bound_C = p_C + _gumbel_upper_bound(position_hash(index_u_C, key0, key1))
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
            at_least_CM = _order_key(s_C)[:, None] >= candidates_M[None, :]
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


# ---------------------------------------------------------- Triton pallas_call wrappers

def _layout(rows: int, vocab: int, block_v: int, num_splits: int | None):
    """(splits, tiles per split): splits of whole tiles, enough programs to fill the GPU."""
    n_tiles = pl.cdiv(vocab, block_v)
    splits = num_splits or max(1, pl.cdiv(_TARGET_PROGRAMS, rows))
    tiles = pl.cdiv(n_tiles, min(max(splits, 1), n_tiles))
    return pl.cdiv(n_tiles, tiles), tiles


def _compiler_params(interpret):
    return None if interpret else plgpu.CompilerParams(num_warps=4, num_stages=3)


def _triton_sample_partials(logits_RV, t_R, threshold_R, keys_R2, *, block_v, splits, tiles,
                            interpret):
    r, v = logits_RV.shape
    part = jax.ShapeDtypeStruct((r, splits), jnp.float32)
    kernel = functools.partial(_sample_kernel, vocab=v, block_v=block_v, tiles=tiles)
    return pl.pallas_call(
        kernel, grid=(r, splits),
        out_shape=[part] * 5 + [jax.ShapeDtypeStruct((r, splits), jnp.int32)],
        interpret=interpret, compiler_params=_compiler_params(interpret),
        name="spec_verify_sample",
    )(logits_RV, t_R, threshold_R, keys_R2[:, 0], keys_R2[:, 1])


def _triton_counts(logits_RV, t_R, shift_R, candidates_RM, active_R, *, with_mass, splits,
                   tiles, interpret):
    """Sums over splits of `_count_kernel`: (count_RM int32, mass_RM float32); rows that are
    not active get zeros."""
    r, v = logits_RV.shape
    m = candidates_RM.shape[1]
    kernel = functools.partial(_count_kernel, vocab=v, block=_COUNT_BLOCK, tiles=tiles,
                               with_mass=with_mass)
    count_RSM, mass_RSM = pl.pallas_call(
        kernel, grid=(r, splits),
        out_shape=[jax.ShapeDtypeStruct((r, splits, m), jnp.int32),
                   jax.ShapeDtypeStruct((r, splits, m), jnp.float32)],
        interpret=interpret, compiler_params=_compiler_params(interpret),
        name="spec_verify_count",
    )(logits_RV, t_R, shift_R, active_R.astype(jnp.int32), candidates_RM)
    return _only_active(active_R, jnp.sum(count_RSM, axis=1), jnp.sum(mass_RSM, axis=1))


def _only_active(active_R, count_RM, mass_RM):
    active_R1 = active_R[:, None]
    return jnp.where(active_R1, count_RM, 0), jnp.where(active_R1, mass_RM, 0.0)


# ------------------------------------------------------------------ Mosaic kernels (TPU)

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
    """One (row block, vocabulary block) step of `_sample_kernel`'s pass: rows are sublanes,
    per-row settings and state are [rows, 1] columns, and the outputs, whose block stays put
    along the vocabulary axis, carry the state from step to step."""
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
    m_raw_R1, l_raw_R1 = _online_logsumexp(m_raw_ref[...], l_raw_ref[...], x_RC)
    m_raw_ref[...], l_raw_ref[...] = m_raw_R1, l_raw_R1

    def processed():  # greedy rows' processed values are never used: scale them by 1
        s_RC = x_RC / jnp.where(greedy_R1, 1.0, t_R1)
        return jnp.where(s_RC >= threshold_ref[...], s_RC, -jnp.inf)

    # Per-block flags from scalar prefetch, as in `_sample_kernel` per row: a block whose
    # rows all have processed == raw shares the raw sum-exp; one with no sampled row is greedy.
    any_processed = processed_G[i] != 0
    p_RC = jax.lax.cond(any_processed, processed, lambda: x_RC)
    m_proc_ref[...], l_proc_ref[...] = jax.lax.cond(
        any_processed, lambda: _online_logsumexp(m_proc_ref[...], l_proc_ref[...], p_RC),
        lambda: (m_raw_R1, l_raw_R1))
    best_R1 = best_ref[...]

    def sampled():
        index_u_1C = index_1C.astype(jnp.uint32)
        key0_R1, key1_R1 = key0_ref[...], key1_ref[...]
        bound_RC = p_RC + _gumbel_upper_bound(position_hash(index_u_1C, key0_R1, key1_R1))
        # One branch for the whole block: its logs run when any sampled row can improve.
        reach = jnp.any((jnp.max(bound_RC, axis=1, keepdims=True) >= best_R1) & ~greedy_R1)
        exact = lambda: jnp.where(  # noqa: E731
            p_RC == -jnp.inf, -jnp.inf, p_RC + gumbel_from_index(index_u_1C, key0_R1, key1_R1))
        noisy_RC = jax.lax.cond(reach, exact, lambda: jnp.full_like(p_RC, -jnp.inf))
        return jnp.where(greedy_R1, x_RC, noisy_RC)

    z_RC = jax.lax.cond(sampled_G[i] != 0, sampled, lambda: x_RC)
    # The first maximum of the block, by a min over indices: Mosaic reduces int32 with
    # min/max/add, and a later block wins only if strictly larger, as in `_sample_kernel`.
    z_R1 = jnp.max(z_RC, axis=1, keepdims=True)
    first_R1 = jnp.min(jnp.where(z_RC == z_R1, index_1C, jnp.iinfo(jnp.int32).max), axis=1,
                       keepdims=True)
    better_R1 = z_R1 > best_R1
    best_ref[...] = jnp.where(better_R1, z_R1, best_R1)
    best_index_ref[...] = jnp.where(better_R1, first_R1, best_index_ref[...])


def _mosaic_count_kernel(active_G, t_ref, shift_ref, candidates_ref, logits_ref, count_ref,
                         mass_ref, *, vocab, with_mass):
    """`_count_kernel` on a (row block, vocabulary block): candidate c's column [rows, 1] is
    candidates_ref[c], and count_ref[c] / mass_ref[c] accumulate along the vocabulary axis.
    Blocks with no active row skip the work (and their index map, the copies)."""
    i, j = pl.program_id(0), pl.program_id(1)

    @pl.when(j == 0)
    def _():
        count_ref[...] = jnp.zeros(count_ref.shape, count_ref.dtype)
        mass_ref[...] = jnp.zeros(mass_ref.shape, mass_ref.dtype)

    @pl.when(active_G[i] != 0)
    def _():
        _, x_RC = _mosaic_tile(logits_ref, j, vocab)
        s_RC = x_RC / t_ref[...]
        key_RC = _order_key(s_RC)
        if with_mass:
            e_RC = jnp.exp(s_RC - shift_ref[...])
        for c in range(candidates_ref.shape[0]):  # [rows, C] masks, one candidate at a time
            at_least_RC = key_RC >= candidates_ref[c]
            count_ref[c] += jnp.sum(at_least_RC.astype(jnp.int32), axis=1, keepdims=True)
            if with_mass:
                mass_ref[c] += jnp.sum(jnp.where(at_least_RC, e_RC, 0.0), axis=1, keepdims=True)


# --------------------------------------------------------- Mosaic pallas_call wrappers

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


def _mosaic_sample_partials(logits_RV, t_R, threshold_R, keys_R2, *, block_v, interpret):
    """`_triton_sample_partials`'s six [R, splits] partials with one split: [R, 1]."""
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
        compiler_params=_mosaic_params(), interpret=interpret, name="spec_verify_sample",
    )(_any_per_block(sampled_R, rows, row_blocks), _any_per_block(processed_R, rows, row_blocks),
      *columns, logits_RV)
    return [x[:r] for x in partials]


def _mosaic_counts(logits_RV, t_R, shift_R, candidates_RM, active_R, *, with_mass, block_v,
                   interpret):
    """`_triton_counts`' result from `_mosaic_count_kernel`."""
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
        compiler_params=_mosaic_params(), interpret=interpret, name="spec_verify_count",
    )(_any_per_block(active_R, rows, row_blocks), _pad_rows(t_R, size, 1.0)[:, None],
      _pad_rows(shift_R, size, 0.0)[:, None], candidates_MS1, logits_RV)
    return _only_active(active_R, count_MS1[:, :r, 0].T, mass_MS1[:, :r, 0].T)


# ----------------------------------------------------------------- top-k / top-p

def _bisect(stat_fn, target_R, lo_R, hi_R, active_R):
    """Largest int32 key c in [lo, hi) with stat(c) >= target, for each active row, given
    stat nonincreasing in c, stat(lo) >= target and stat(hi) < target. `stat_fn(cand_RM,
    running_R)` evaluates `_CANDIDATES` keys per row in one pass over the vocabulary."""
    m = _CANDIDATES
    steps_M = jnp.arange(1, m + 1, dtype=jnp.uint32)
    as_u32 = lambda x: jax.lax.bitcast_convert_type(x, jnp.uint32)  # noqa: E731

    def gap(lo_R, hi_R):  # hi - lo as uint32: exact, as the true difference is < 2**32
        return as_u32(hi_R) - as_u32(lo_R)

    def running(lo_R, hi_R):
        return active_R & (gap(lo_R, hi_R) > 1)

    def body(state):
        lo_R, hi_R = state
        gap_R = gap(lo_R, hi_R)
        offsets_RM = jnp.maximum(gap_R // (m + 1), 1)[:, None] * steps_M[None, :]
        valid_RM = offsets_RM < gap_R[:, None]
        cand_RM = jax.lax.bitcast_convert_type(as_u32(lo_R)[:, None] + offsets_RM, jnp.int32)
        run_R = running(lo_R, hi_R)
        # stat is monotone, so the candidates that pass are a prefix.
        n_ok_R = jnp.sum(valid_RM & (stat_fn(cand_RM, run_R) >= target_R[:, None]), axis=1)

        def at(n_R):
            return jnp.take_along_axis(cand_RM, jnp.clip(n_R, 0, m - 1)[:, None], 1)[:, 0]

        new_lo_R = jnp.where(n_ok_R > 0, at(n_ok_R - 1), lo_R)
        n_valid_R = jnp.sum(valid_RM, axis=1)
        new_hi_R = jnp.where(n_valid_R > n_ok_R, at(n_ok_R), hi_R)
        return jnp.where(run_R, new_lo_R, lo_R), jnp.where(run_R, new_hi_R, hi_R)

    lo_R, _ = jax.lax.while_loop(lambda s: jnp.any(running(*s)), body, (lo_R, hi_R))
    return lo_R


def _thresholds(logits_RV, t_R, top_k_R, top_p_R, count_fn):
    """Per row, the smallest scaled logit that top-k then top-p keep (-inf: keep all), as
    `kernels.sampling._filter_top_k_top_p` defines it. `count_fn` is `_triton_counts` or
    `_mosaic_counts` with its layout bound."""
    r, v = logits_RV.shape
    sampled_R = t_R > 0
    use_k_R = sampled_R & (top_k_R > 0) & (top_k_R < v)
    use_p_R = sampled_R & (top_p_R < 1.0)
    none_R = jnp.full((r,), -jnp.inf, jnp.float32)
    neg_inf_key = _order_key(jnp.float32(-jnp.inf))

    def search():
        t_safe_R = jnp.where(sampled_R, t_R, 1.0)
        # Division by t > 0 is monotone, rounding included: max(x) / t == max(x / t).
        max_R = jnp.max(logits_RV, axis=1).astype(jnp.float32) / t_safe_R
        hi_R = _order_key(max_R) + 1
        counts = functools.partial(count_fn, logits_RV, t_safe_R, max_R)
        kth_key_R = _bisect(lambda c, a: counts(c, a, with_mass=False)[0], top_k_R,
                            jnp.full((r,), neg_inf_key), hi_R, use_k_R)
        kth_key_R = jnp.where(use_k_R, kth_key_R, neg_inf_key)
        kth_R = _key_value(kth_key_R)

        def top_p():
            # The top-k softmax's normaliser: the mass above the k-th value plus the ties
            # at it that fill the k places (the reference's softmax over k sorted places).
            above_RM = jnp.broadcast_to((kth_key_R + 1)[:, None], (r, _CANDIDATES))
            count_R, mass_R = (x[:, 0] for x in counts(above_RM, use_p_R, with_mass=True))
            ties_R = jnp.where(use_k_R, top_k_R - count_R, 0).astype(jnp.float32)
            total_R = mass_R + ties_R * jnp.exp(kth_R - max_R)
            pth_key_R = _bisect(lambda c, a: counts(c, a, with_mass=True)[1], top_p_R * total_R,
                                kth_key_R, hi_R, use_p_R)
            return jnp.where(use_p_R, _key_value(pth_key_R), -jnp.inf)

        pth_R = jax.lax.cond(jnp.any(use_p_R), top_p, lambda: none_R)
        return jnp.where(use_k_R | use_p_R, jnp.maximum(kth_R, pth_R), -jnp.inf)

    return jax.lax.cond(jnp.any(use_k_R | use_p_R), search, lambda: none_R)


# ------------------------------------------------------------------------- entry points

def _default_backend() -> str:
    return "mosaic" if jax.default_backend() == "tpu" else "triton"


def _kernel_applies(logits_BKV, backend: str) -> bool:
    platform = jax.default_backend()
    return (logits_BKV.dtype in _KERNEL_DTYPES[backend] and logits_BKV.shape[-1] > 0
            and platform in ("cpu", _PLATFORM[backend]))


def verify_pallas(logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B, top_p_B,
                  keys_BK2, *, interpret: bool = False, backend: str | None = None,
                  block_v: int | None = None, num_splits: int | None = None):
    """`verify_reference`'s contract, computed by the Pallas kernels (module docstring).

    `backend`: "triton" (GPU) or "mosaic" (TPU), by default the one of the default device.
    `block_v`: the vocabulary tile; Triton: a power of two >= 256 (default 1024); Mosaic: a
    multiple of 128 (default 8192). `num_splits` (Triton only): programs per row (default:
    enough for ~2048 programs). Falls back to `verify_reference` for logits of another dtype
    (Triton takes float32/bfloat16/float16, Mosaic float32/bfloat16) and on a platform that
    the backend does not lower for (CPU runs either in interpret mode).
    """
    backend = backend or _default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; valid: {BACKENDS}")
    _check_shapes(logits_BKV, drafts_BD, keys_BK2)
    block_v = _BLOCK_V[backend] if block_v is None else block_v
    if backend == "triton" and (block_v < _COUNT_BLOCK or pl.next_power_of_2(block_v) != block_v):
        raise ValueError(f"block_v={block_v}: Triton needs a power of two >= {_COUNT_BLOCK}")
    if backend == "mosaic" and (block_v <= 0 or block_v % 128):
        raise ValueError(f"block_v={block_v}: Mosaic needs a positive multiple of 128 (lanes)")
    if backend == "mosaic" and num_splits is not None:
        raise ValueError(f"num_splits={num_splits}: only the Triton kernel splits rows; the "
                         "Mosaic kernel walks each row block's vocabulary in order")
    if not _kernel_applies(logits_BKV, backend):
        return verify_reference(logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B,
                                top_p_B, keys_BK2)
    b, k, v = logits_BKV.shape
    logits_RV = logits_BKV.reshape(b * k, v)
    t_R = _per_position(temperature_B.astype(jnp.float32), k)
    if backend == "triton":
        splits, tiles = _layout(b * k, v, block_v, num_splits)
        count_fn = functools.partial(_triton_counts, splits=splits,
                                     tiles=tiles * (block_v // _COUNT_BLOCK), interpret=interpret)
        sample_fn = functools.partial(_triton_sample_partials, block_v=block_v, splits=splits,
                                      tiles=tiles, interpret=interpret)
    else:
        count_fn = functools.partial(_mosaic_counts, block_v=block_v, interpret=interpret)
        sample_fn = functools.partial(_mosaic_sample_partials, block_v=block_v,
                                      interpret=interpret)
    threshold_R = _thresholds(logits_RV, t_R, _per_position(top_k_B.astype(jnp.int32), k),
                              _per_position(top_p_B.astype(jnp.float32), k), count_fn)
    m_raw, l_raw, m_proc, l_proc, best_RS, best_index_RS = sample_fn(
        logits_RV, t_R, threshold_R, keys_BK2.reshape(b * k, 2).astype(jnp.uint32))
    # The first split holding the maximum holds the lowest index among the maxima.
    winner_R1 = jnp.argmax(best_RS, axis=1)[:, None]
    tokens_R = jnp.take_along_axis(best_index_RS, winner_R1, axis=1)[:, 0]
    x_R = jnp.take_along_axis(logits_RV, tokens_R[:, None], axis=1)[:, 0].astype(jnp.float32)
    greedy_R = t_R <= 0
    scaled_R = x_R / jnp.where(greedy_R, 1.0, t_R)  # the winner is kept: its processed logit
    logprobs_R = x_R - _merge_logsumexp(m_raw, l_raw)
    sample_logprobs_R = jnp.where(greedy_R, 0.0, scaled_R - _merge_logsumexp(m_proc, l_proc))
    tokens_BK = tokens_R.reshape(b, k)
    return (tokens_BK, accepted_count(tokens_BK, drafts_BD, num_drafts_B),
            logprobs_R.reshape(b, k), sample_logprobs_R.reshape(b, k))


def verify(logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B, top_p_B, keys_BK2, *,
           impl: str = "auto"):
    """`impl`: "reference", "pallas" (Triton on GPU, Mosaic on TPU, interpret mode on CPU), or
    "auto": the kernel on GPU, the reference elsewhere (on CPU interpreting the kernel is only
    slower, and the Mosaic kernel has yet to run on a TPU)."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}; valid: {IMPLS}")
    args = (logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B, top_p_B, keys_BK2)
    platform = jax.default_backend()
    if impl == "reference" or (impl == "auto" and platform != "gpu"):
        return verify_reference(*args)
    return verify_pallas(*args, interpret=platform == "cpu")
