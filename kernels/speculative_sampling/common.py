"""What the Triton and Mosaic speculative-sampling kernels share: the noise bound, the online
log-sum-exp, and the top-k/top-p thresholds.

The noise bound. The noise is `gumbel_from_index` itself, evaluated in the kernels. Its two
logs dominate the arithmetic, so each tile first bounds every entry's noise from the same
integer hash with no transcendental (`gumbel_upper_bound`: -log(-log u) <= -log(1 - u), and
log2 w >= its float bits read as an integer, a chord of the concave log2) and computes the
exact noise only when the tile's bound reaches the best value so far. The bound is rigorous,
so the winner and its value are exactly the reference's. The noise is finite
(`uniform_from_hash` keeps u < 1), so the bound is finite too.

Top-k and top-p, only when some row uses them (`lax.cond`), set a per-row threshold on the
scaled logits before the sampling pass, as `kernels.sampling` defines them, by bisection on
an order-preserving int32 key of the float values: each pass over the vocabulary counts, for
`CANDIDATES` candidate keys per row, the entries at or above each and their unnormalised
mass, so a pass narrows the key interval 9-fold (about 11 passes for 32-bit keys). Top-k's
threshold is the largest key with count >= k, which is exactly the k-th largest value.
Top-p's is the largest key whose mass at or above it reaches top_p * (the top-k mass), which
is the reference's last kept value in exact arithmetic; the reference sums its mass in
sorted order in float32 and the kernels sum per tile, so when the mass at a boundary lies
within float rounding of top_p the two can keep a different number of tokens. The tests
check that they agree on theirs.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from kernels.sampling import uniform_from_hash

CANDIDATES = 8  # threshold keys tested per row per bisection pass (a power of two)
# gumbel_upper_bound is exact math plus a few float32 roundings of at most ~1e-5 and the
# logs' own ulps: 1e-3 covers them many times over and loosens the test by nothing visible.
_BOUND_MARGIN = 1e-3
_LN2 = math.log(2.0)
_LOG2E = 1.0 / _LN2


def gumbel_upper_bound(hash_C: jax.Array) -> jax.Array:
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


def order_key(x: jax.Array) -> jax.Array:
    """int32 that orders like the float32 values (-0.0 and +0.0 share a key, as they compare)."""
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x), jnp.int32)
    return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _key_value(key: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(jnp.where(key < 0, key ^ 0x7FFFFFFF, key), jnp.float32)


def online_logsumexp(m, l, x):
    """(max, sum exp(x - max)) after adding the tile x along its last axis; all -inf so far
    gives (-inf, 0). A 2-D tile's rows keep that axis ([rows, 1] state), to broadcast
    against it. exp2 of a scaled argument: libdevice's exp2f is the hardware ex2 (2 ulp), a
    few instructions less per vocabulary entry than expf."""
    keep = x.ndim > 1
    m_new = jnp.maximum(m, jnp.max(x, axis=-1, keepdims=keep))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    return m_new, (l * jnp.exp2((m - m_safe) * _LOG2E)
                   + jnp.sum(jnp.exp2((x - m_safe) * _LOG2E), axis=-1, keepdims=keep))


def only_active(active_R, count_RM, mass_RM):
    """The counting kernels' result with rows that are not active zeroed."""
    active_R1 = active_R[:, None]
    return jnp.where(active_R1, count_RM, 0), jnp.where(active_R1, mass_RM, 0.0)


def _bisect(stat_fn, target_R, lo_R, hi_R, active_R):
    """Largest int32 key c in [lo, hi) with stat(c) >= target, for each active row, given
    stat nonincreasing in c, stat(lo) >= target and stat(hi) < target. `stat_fn(cand_RM,
    running_R)` evaluates `CANDIDATES` keys per row in one pass over the vocabulary."""
    m = CANDIDATES
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


def thresholds(logits_RV, t_R, top_k_R, top_p_R, count_fn):
    """Per row, the smallest scaled logit that top-k then top-p keep (-inf: keep all), as
    `kernels.sampling._filter_top_k_top_p` defines it. `count_fn` is `triton.counts` or
    `mosaic.counts` with its layout bound."""
    r, v = logits_RV.shape
    sampled_R = t_R > 0
    use_k_R = sampled_R & (top_k_R > 0) & (top_k_R < v)
    use_p_R = sampled_R & (top_p_R < 1.0)
    none_R = jnp.full((r,), -jnp.inf, jnp.float32)
    neg_inf_key = order_key(jnp.float32(-jnp.inf))

    def search():
        t_safe_R = jnp.where(sampled_R, t_R, 1.0)
        # Division by t > 0 is monotone, rounding included: max(x) / t == max(x / t).
        max_R = jnp.max(logits_RV, axis=1).astype(jnp.float32) / t_safe_R
        hi_R = order_key(max_R) + 1
        counts = functools.partial(count_fn, logits_RV, t_safe_R, max_R)
        kth_key_R = _bisect(lambda c, a: counts(c, a, with_mass=False)[0], top_k_R,
                            jnp.full((r,), neg_inf_key), hi_R, use_k_R)
        kth_key_R = jnp.where(use_k_R, kth_key_R, neg_inf_key)
        kth_R = _key_value(kth_key_R)

        def top_p():
            # The top-k softmax's normaliser: the mass above the k-th value plus the ties
            # at it that fill the k places (the reference's softmax over k sorted places).
            above_RM = jnp.broadcast_to((kth_key_R + 1)[:, None], (r, CANDIDATES))
            count_R, mass_R = (x[:, 0] for x in counts(above_RM, use_p_R, with_mass=True))
            ties_R = jnp.where(use_k_R, top_k_R - count_R, 0).astype(jnp.float32)
            total_R = mass_R + ties_R * jnp.exp(kth_R - max_R)
            pth_key_R = _bisect(lambda c, a: counts(c, a, with_mass=True)[1], top_p_R * total_R,
                                kth_key_R, hi_R, use_p_R)
            return jnp.where(use_p_R, _key_value(pth_key_R), -jnp.inf)

        pth_R = jax.lax.cond(jnp.any(use_p_R), top_p, lambda: none_R)
        return jnp.where(use_k_R | use_p_R, jnp.maximum(kth_R, pth_R), -jnp.inf)

    return jax.lax.cond(jnp.any(use_k_R | use_p_R), search, lambda: none_R)
