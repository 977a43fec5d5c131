"""Speculative-decoding verification: the position-keyed sample at each of the K = D + 1
positions of a row, and how many of the row's D drafts match it.

    tokens_BK, accepted_B, logprobs_BK, sample_logprobs_BK = verify(
        logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B, top_p_B, keys_BK2)

`verify_reference` is `kernels.sampling.sample_reference` on the B*K rows plus the count.
`verify_pallas` computes the same tokens without a sort and without a [B, K, V] noise
array (Triton on GPU, interpret mode on CPU):

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
failing: logits that are not float32/bfloat16/float16, or a backend with no lowering here
(TPU, see below). On a GPU the kernel and the XLA reference compute the same integer hash
and the same libdevice logs, and bench/kernels.py found the same tokens at every position
of every batch it ran on an H200, except the reference's dropped-token picks below.

Cost: the noise rule, not memory, bounds this kernel. Per vocabulary entry it hashes (two
lowbias32 rounds: ~17 integer instructions, which Hopper issues at half the float rate),
converts twice, takes one exp2 and a few maxima, about 70 float-instruction slots, so an
H200 runs it at ~30% of its HBM bandwidth on bf16 logits (bench/kernels.py). The exact
noise on every entry (two `logf`) would add some 35 more (estimated, not measured).

The noise is finite (`uniform_from_hash` keeps u < 1), so the upper bound below is finite too.

TPU: no Mosaic variant; `verify_pallas` and `verify(impl="auto")` use the reference there.
This kernel is not portable to Mosaic by a lowering switch: (1) its ragged vocabulary tail
uses masked loads, which Mosaic does not lower (NotImplementedError in its load rule, seen
with `jax.export` for ("tpu",) on jax 0.11.2); (2) it reads rows from whole-array refs at
dynamic offsets, which on TPU would place the whole [B*K, V] operand in VMEM; (3) it keeps
the online softmax in scalars with scalar `exp`, which Mosaic's compiler does not legalize
(transcendentals are vector-only on TPU) and which an export on CPU would not catch. A TPU
version is a different kernel: rows reshaped to [V/128, 128] blocks moved by BlockSpecs,
per-row settings by scalar prefetch, lane-replicated vector state, and a TPU to run it on.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.sampling import (gumbel_from_index, position_hash, sample_reference,
                              uniform_from_hash)

IMPLS = ("auto", "pallas", "reference")
_KERNEL_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
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


def _online_logsumexp(m, l, x_C):
    """(max, sum exp(x - max)) after adding the tile x; all -inf so far gives (-inf, 0).
    exp2 of a scaled argument: libdevice's exp2f is the hardware ex2 (2 ulp), a few
    instructions less per vocabulary entry than expf."""
    m_new = jnp.maximum(m, jnp.max(x_C))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    return m_new, (l * jnp.exp2((m - m_safe) * _LOG2E)
                   + jnp.sum(jnp.exp2((x_C - m_safe) * _LOG2E)))


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


# ------------------------------------------------------------------------ the kernels

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


# ----------------------------------------------------------------- pallas_call wrappers

def _layout(rows: int, vocab: int, block_v: int, num_splits: int | None):
    """(splits, tiles per split): splits of whole tiles, enough programs to fill the GPU."""
    n_tiles = pl.cdiv(vocab, block_v)
    splits = num_splits or max(1, pl.cdiv(_TARGET_PROGRAMS, rows))
    tiles = pl.cdiv(n_tiles, min(max(splits, 1), n_tiles))
    return pl.cdiv(n_tiles, tiles), tiles


def _compiler_params(interpret):
    return None if interpret else plgpu.CompilerParams(num_warps=4, num_stages=3)


def _sample_partials(logits_RV, t_R, threshold_R, keys_R2, *, block_v, splits, tiles,
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


def _counts(logits_RV, t_R, shift_R, candidates_RM, active_R, *, with_mass, splits, tiles,
            interpret):
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
    active_R1 = active_R[:, None]
    return (jnp.where(active_R1, jnp.sum(count_RSM, axis=1), 0),
            jnp.where(active_R1, jnp.sum(mass_RSM, axis=1), 0.0))


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


def _thresholds(logits_RV, t_R, top_k_R, top_p_R, *, splits, tiles, interpret):
    """Per row, the smallest scaled logit that top-k then top-p keep (-inf: keep all), as
    `kernels.sampling._filter_top_k_top_p` defines it."""
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
        counts = functools.partial(_counts, logits_RV, t_safe_R, max_R, splits=splits,
                                   tiles=tiles, interpret=interpret)
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

def _kernel_applies(logits_BKV) -> bool:
    backend = jax.default_backend()
    return (logits_BKV.dtype in _KERNEL_DTYPES and logits_BKV.shape[-1] > 0
            and backend in ("cpu", "gpu"))


def verify_pallas(logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B, top_p_B,
                  keys_BK2, *, interpret: bool = False, block_v: int = 1024,
                  num_splits: int | None = None):
    """`verify_reference`'s contract, computed by the Triton kernels (module docstring).

    `block_v`: the vocabulary tile, a power of two >= 256. `num_splits`: programs per row
    (default: enough for ~2048 programs). Falls back to `verify_reference` for logits that
    are not float32/bfloat16/float16 and on backends other than CPU and GPU.
    """
    _check_shapes(logits_BKV, drafts_BD, keys_BK2)
    if block_v < _COUNT_BLOCK or pl.next_power_of_2(block_v) != block_v:
        raise ValueError(f"block_v={block_v}: expected a power of two >= {_COUNT_BLOCK}")
    if not _kernel_applies(logits_BKV):
        return verify_reference(logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B,
                                top_p_B, keys_BK2)
    b, k, v = logits_BKV.shape
    logits_RV = logits_BKV.reshape(b * k, v)
    t_R = _per_position(temperature_B.astype(jnp.float32), k)
    splits, tiles = _layout(b * k, v, block_v, num_splits)
    threshold_R = _thresholds(
        logits_RV, t_R, _per_position(top_k_B.astype(jnp.int32), k),
        _per_position(top_p_B.astype(jnp.float32), k), splits=splits,
        tiles=tiles * (block_v // _COUNT_BLOCK), interpret=interpret)
    m_raw, l_raw, m_proc, l_proc, best_RS, best_index_RS = _sample_partials(
        logits_RV, t_R, threshold_R, keys_BK2.reshape(b * k, 2).astype(jnp.uint32),
        block_v=block_v, splits=splits, tiles=tiles, interpret=interpret)
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
    """`impl`: "reference", "pallas" (interpret mode on CPU), or "auto" (the kernel on GPU,
    the reference elsewhere: interpreting the kernel on CPU would only be slower)."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}; valid: {IMPLS}")
    args = (logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B, top_p_B, keys_BK2)
    backend = jax.default_backend()
    if impl == "reference" or (impl == "auto" and backend != "gpu"):
        return verify_reference(*args)
    return verify_pallas(*args, interpret=backend == "cpu")
