"""GRPO-family losses over completion tokens: PPO-clip policy loss, KL estimators, aggregation.

Shapes: `B` sequences (P prompts x G completions, flattened), `N` completion positions
(static, padded). `mask_BN` is 1 (or True) at real completion tokens. Masked positions may
hold any value, even inf or NaN, in `policy_loss` and `aggregate`: they are selected away,
never multiplied by 0, so they reach neither the loss nor its gradient.
Everything is computed in float32 (ARCHITECTURE.md, invariant 4). Configuration arguments
(`kind`, `mode`, `agg`, clip ranges) are static Python values.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k2", "k3")

# Bound on |log ratio| before exp, as verl does: an exp(>88) would overflow float32 to inf
# (and inf * 0 advantage to NaN). A token that far off-policy is clipped either way.
_MAX_LOG_RATIO = 20.0


def _f32(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _safe_div(num, den):
    """num / den, and 0 where den == 0 (an empty mask)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def masked_mean(x_BN, mask_BN):
    """Mean of x over positions where mask is set (weighted by a float mask); 0 if none."""
    m_BN = _f32(mask_BN)
    return _safe_div(jnp.sum(jnp.where(m_BN != 0, x_BN * m_BN, 0.0)), jnp.sum(m_BN))


def aggregate(loss_BN: jax.Array, mask_BN: jax.Array, mode: str) -> jax.Array:
    """Reduces per-token losses to a scalar.

    - 'token-mean': `sum(l * m) / sum(m)` over the whole batch: every token weighs the same
      (DAPO's token-level loss, Yu et al. 2025).
    - 'seq-mean-token-mean': mean over sequences with at least one token of
      `sum_t(l * m) / sum_t(m)`: every sequence weighs the same, so a token of a long
      completion weighs less (original GRPO, Shao et al. 2024, eq. 3).
    - 'seq-mean-token-sum-norm': `sum(l * m) / (B * N)`, N the static max completion length:
      a constant normaliser with no length bias (Dr. GRPO, Liu et al. 2025; verl's name).

    An empty mask gives 0 (not NaN) in every mode.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {list(AGG_MODES)}")
    loss_BN = _f32(loss_BN)
    m_BN = _f32(mask_BN)
    if loss_BN.ndim != 2 or loss_BN.shape != m_BN.shape:
        raise ValueError(f"loss_BN and mask_BN must both be [B, N], got {loss_BN.shape} "
                         f"and {m_BN.shape}")
    lm_BN = jnp.where(m_BN != 0, loss_BN * m_BN, 0.0)
    if mode == "token-mean":
        return _safe_div(jnp.sum(lm_BN), jnp.sum(m_BN))
    if mode == "seq-mean-token-mean":
        count_B = jnp.sum(m_BN, axis=1)
        seq_B = _safe_div(jnp.sum(lm_BN, axis=1), count_B)
        has_tokens_B = (count_B > 0).astype(jnp.float32)
        return _safe_div(jnp.sum(seq_B * has_tokens_B), jnp.sum(has_tokens_B))
    b, n = loss_BN.shape
    return jnp.sum(lm_BN) / float(b * n)


def policy_loss(logp_BN: jax.Array, old_logp_BN: jax.Array, adv_B: jax.Array,
                mask_BN: jax.Array, *, clip_low: float = 0.2, clip_high: float = 0.2,
                dual_clip: float | None = None,
                agg: str = "token-mean") -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO-clip surrogate loss (to minimise) and its metrics.

    Per token, with `ratio = exp(logp - old_logp)` and `A` the sequence's advantage:
    `pg = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)`
    (Schulman et al. 2017; `clip_high > clip_low` is DAPO's clip-higher, Yu et al. 2025).
    With `dual_clip = c` (Ye et al. 2020, as in verl), a token with `A < 0` has its loss
    capped at `-c * A`: a very large ratio on a bad token cannot blow up the update.
    The log ratio is bounded to +-20 before exp (as in verl), so the loss stays finite.

    Metrics, each a mean over valid tokens whatever `agg` is:
    - clip_frac: the clipped term is strictly smaller, so the min picks it (no gradient);
    - dual_clip_frac: the dual-clip cap is active;
    - approx_kl: k3 estimate of KL(old || new) from the tokens, sampled from old:
      `ratio - 1 - log ratio`;
    - ratio_mean: the mean of `ratio`.
    """
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"clip_low must be in [0, 1), got {clip_low}")
    if not clip_high >= 0.0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None for off), got {dual_clip}")
    if agg not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {agg!r}; valid: {list(AGG_MODES)}")
    logp_BN, old_logp_BN, adv_B = _f32(logp_BN), _f32(old_logp_BN), _f32(adv_B)
    if not (logp_BN.ndim == 2 and logp_BN.shape == old_logp_BN.shape == jnp.shape(mask_BN)
            and adv_B.shape == logp_BN.shape[:1]):
        raise ValueError(f"expected logp_BN, old_logp_BN, mask_BN of one shape [B, N] and "
                         f"adv_B of shape [B]; got {logp_BN.shape}, {old_logp_BN.shape}, "
                         f"{jnp.shape(mask_BN)}, {adv_B.shape}")
    valid_BN = _f32(mask_BN) != 0

    # Zeroing the log ratio at padding keeps inf/NaN there out of exp and out of the grad.
    log_ratio_BN = jnp.clip(jnp.where(valid_BN, logp_BN - old_logp_BN, 0.0),
                            -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio_BN = jnp.exp(log_ratio_BN)
    a_B1 = adv_B[:, None]
    unclipped_BN = ratio_BN * a_B1
    clipped_BN = jnp.clip(ratio_BN, 1.0 - clip_low, 1.0 + clip_high) * a_B1
    # The min as a select on the very predicate that clip_frac reports.
    is_clipped_BN = clipped_BN < unclipped_BN
    pg_BN = -jnp.where(is_clipped_BN, clipped_BN, unclipped_BN)
    if dual_clip is None:
        is_dual_clipped_BN = jnp.zeros_like(valid_BN)
    else:
        cap_BN = jnp.broadcast_to(-dual_clip * a_B1, pg_BN.shape)
        is_dual_clipped_BN = (a_B1 < 0) & (pg_BN > cap_BN)
        pg_BN = jnp.where(is_dual_clipped_BN, cap_BN, pg_BN)

    loss = aggregate(pg_BN, mask_BN, agg)
    metrics = {
        "clip_frac": masked_mean(is_clipped_BN.astype(jnp.float32), valid_BN),
        "dual_clip_frac": masked_mean(is_dual_clipped_BN.astype(jnp.float32), valid_BN),
        "approx_kl": masked_mean(ratio_BN - 1.0 - log_ratio_BN, valid_BN),
        "ratio_mean": masked_mean(ratio_BN, valid_BN),
    }
    return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def kl_penalty(logp_BN: jax.Array, ref_logp_BN: jax.Array, kind: str) -> jax.Array:
    """Per-token estimates `[B, N]` of KL(pi || ref) from tokens sampled from pi.

    With `d = ref_logp - logp` (Schulman, "Approximating KL Divergence", 2020):
    - 'k1' = -d: unbiased, high variance, negative on some tokens;
    - 'k2' = d^2 / 2: biased, low variance, >= 0;
    - 'k3' = exp(d) - d - 1: unbiased and >= 0, low variance (GRPO's KL term).
    As a loss term, its gradient is taken through `logp` only; `ref_logp` is a constant.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; valid: {list(KL_KINDS)}")
    d_BN = _f32(ref_logp_BN) - _f32(logp_BN)
    if kind == "k1":
        return -d_BN
    if kind == "k2":
        return 0.5 * jnp.square(d_BN)
    return jnp.exp(d_BN) - d_BN - 1.0


def entropy_from_logits(logits_BNV: jax.Array, mask_BN: jax.Array) -> jax.Array:
    """Mean entropy (nats) of the token distributions at valid positions; 0 if none.

    Computed in float32 through log_softmax; logits of -inf (tokens filtered out) count as
    probability 0 and keep both the value and its gradient finite.
    """
    return masked_mean(token_entropy(logits_BNV), mask_BN)


def token_entropy(logits_BNV: jax.Array) -> jax.Array:
    """The entropy (nats) `[B, N]` of each position's token distribution (float32)."""
    logp_BNV = jax.nn.log_softmax(_f32(logits_BNV), axis=-1)
    # 0 * -inf is NaN; a filtered token contributes 0 to the entropy instead.
    finite_logp_BNV = jnp.where(jnp.isfinite(logp_BNV), logp_BNV, 0.0)
    return -jnp.sum(jnp.exp(logp_BNV) * finite_logp_BNV, axis=-1)


def overlong_mask(finished_B: jax.Array, mask_BN: jax.Array) -> jax.Array:
    """`mask_BN` with the rows of unfinished (cut at max_new_tokens) sequences zeroed.

    DAPO's overlong filtering (Yu et al. 2025): a truncated completion gets no loss, so it
    is not penalised for a length limit it could not see. Keeps mask_BN's dtype.
    """
    mask_BN = jnp.asarray(mask_BN)
    return jnp.where(jnp.asarray(finished_B, bool)[:, None], mask_BN,
                     jnp.zeros_like(mask_BN))
