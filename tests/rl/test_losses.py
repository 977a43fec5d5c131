"""GRPO-family losses against hand-worked values."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.rl.losses import (aggregate, entropy_from_logits, kl_penalty, overlong_mask,
                             policy_loss)

LN2 = 0.6931472


def one_token(ratio, adv, **kw):
    """policy_loss on a single valid token with old prob 1/2 and new prob ratio/2."""
    logp = jnp.array([[math.log(0.5 * ratio)]])
    old = jnp.array([[math.log(0.5)]])
    return policy_loss(logp, old, jnp.array([adv]), jnp.ones((1, 1)), **kw)


# --- PPO clip -------------------------------------------------------------------------

@pytest.mark.parametrize("ratio, adv, kw, want_loss, want_clip_frac", [
    # A > 0, ratio 1.5 > 1.2: min(1.5, 1.2) = 1.2 is the clipped term.
    (1.5, 1.0, {}, -1.2, 1.0),
    # A < 0, ratio 1.5: min(-1.5, -1.2) = -1.5, the unclipped term (pessimistic bound).
    (1.5, -1.0, {}, 1.5, 0.0),
    # A > 0, ratio 0.5 below the range: min(0.5, 0.8) = 0.5, not clipped.
    (0.5, 1.0, {}, -0.5, 0.0),
    # A < 0, ratio 0.5: min(-0.5, -0.8) = -0.8, clipped.
    (0.5, -1.0, {}, 0.8, 1.0),
    # Inside the range nothing is clipped: -ratio * A.
    (1.1, 2.0, {}, -2.2, 0.0),
    # Clip-higher: the upper bound is 1.28, so ratio 1.25 with A > 0 keeps its gradient ...
    (1.25, 1.0, dict(clip_low=0.2, clip_high=0.28), -1.25, 0.0),
    # ... which symmetric 0.2 clipping would cut at 1.2 ...
    (1.25, 1.0, {}, -1.2, 1.0),
    # ... while the lower bound stays at 0.8.
    (0.7, -1.0, dict(clip_low=0.2, clip_high=0.28), 0.8, 1.0),
    (1.4, 1.0, dict(clip_low=0.2, clip_high=0.28), -1.28, 1.0),
])
def test_ppo_clip_single_token(ratio, adv, kw, want_loss, want_clip_frac):
    loss, metrics = one_token(ratio, adv, **kw)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    assert float(metrics["clip_frac"]) == want_clip_frac
    np.testing.assert_allclose(metrics["ratio_mean"], ratio, rtol=1e-6)


def test_dual_clip():
    # A = -1, ratio 5: PPO loss -min(-5, -1.2) = 5; dual clip c = 3 caps it at 3.
    loss, m = one_token(5.0, -1.0, dual_clip=3.0)
    np.testing.assert_allclose(loss, 3.0, rtol=1e-6)
    assert float(m["dual_clip_frac"]) == 1.0
    loss, m = one_token(5.0, -1.0)
    np.testing.assert_allclose(loss, 5.0, rtol=1e-6)
    assert float(m["dual_clip_frac"]) == 0.0
    # Below the cap (ratio 2 < 3) and for A > 0 the dual clip changes nothing.
    loss, m = one_token(2.0, -1.0, dual_clip=3.0)
    np.testing.assert_allclose(loss, 2.0, rtol=1e-6)
    assert float(m["dual_clip_frac"]) == 0.0
    loss, _ = one_token(5.0, 1.0, dual_clip=3.0)
    np.testing.assert_allclose(loss, -1.2, rtol=1e-6)
    # The cap scales with |A|: A = -2, ratio 5 -> 10 capped at 6.
    loss, _ = one_token(5.0, -2.0, dual_clip=3.0)
    np.testing.assert_allclose(loss, 6.0, rtol=1e-6)


def batch_2x3():
    """Row 0 (A = +1): ratios 1.5, 1, 0.5. Row 1 (A = -1): ratios 2, 0.5, padding."""
    ratios = jnp.array([[1.5, 1.0, 0.5], [2.0, 0.5, 1.0]])
    logp = jnp.log(0.4 * ratios).at[1, 2].set(-jnp.inf)  # garbage at the padding
    old = jnp.full((2, 3), math.log(0.4)).at[1, 2].set(jnp.nan)
    return logp, old, jnp.array([1.0, -1.0]), jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32)


def test_policy_loss_batch_and_metrics():
    # Per-token losses: row 0: -1.2 (clipped), -1.0, -0.5; row 1: 2.0, 0.8 (clipped).
    loss, m = policy_loss(*batch_2x3())
    np.testing.assert_allclose(loss, (-1.2 - 1.0 - 0.5 + 2.0 + 0.8) / 5, atol=1e-6)
    np.testing.assert_allclose(m["clip_frac"], 2 / 5, rtol=1e-6)
    np.testing.assert_allclose(m["ratio_mean"], 5.5 / 5, rtol=1e-6)
    # k3 of KL(old || new) per token, ratio - 1 - ln(ratio): 1.5 -> 0.5 - 0.4054651 =
    # 0.0945349; 1 -> 0; 0.5 -> -0.5 + 0.6931472 = 0.1931472; 2 -> 1 - 0.6931472 = 0.3068528.
    # (k1, the mean of -ln(ratio), would be 0.0575364.)
    np.testing.assert_allclose(m["approx_kl"], (0.0945349 + 2 * 0.1931472 + 0.3068528) / 5,
                               rtol=1e-5)
    assert float(m["dual_clip_frac"]) == 0.0
    # Sequence mean instead: row 0 mean -2.7 / 3 = -0.9, row 1 mean 2.8 / 2 = 1.4.
    loss, _ = policy_loss(*batch_2x3(), agg="seq-mean-token-mean")
    np.testing.assert_allclose(loss, (-0.9 + 1.4) / 2, rtol=1e-5)


def test_policy_loss_jits():
    f = jax.jit(policy_loss, static_argnames=("clip_low", "clip_high", "dual_clip", "agg"))
    args = batch_2x3()
    for kw in ({}, dict(clip_high=0.28, dual_clip=3.0, agg="seq-mean-token-sum-norm")):
        loss, m = f(*args, **kw)
        loss_eager, m_eager = policy_loss(*args, **kw)
        np.testing.assert_allclose(loss, loss_eager, atol=1e-6)
        np.testing.assert_allclose(m["clip_frac"], m_eager["clip_frac"])


# --- gradients ------------------------------------------------------------------------

def test_grad_zero_where_clipped_token_mean():
    # Row 0 (A = +1): ratio 1.5 clipped, 1.1 not. Row 1 (A = -1): ratio 0.5 clipped, 1.1 not.
    # d(-ratio * A) / d logp = -A * ratio, divided by the 4 tokens of the token mean.
    ratios = jnp.array([[1.5, 1.1], [0.5, 1.1]])
    old = jnp.full((2, 2), math.log(0.3))
    logp = jnp.log(0.3 * ratios)
    adv = jnp.array([1.0, -1.0])
    grad = jax.grad(lambda lp: policy_loss(lp, old, adv, jnp.ones((2, 2)))[0])(logp)
    np.testing.assert_allclose(grad, [[0.0, -1.1 / 4], [0.0, 1.1 / 4]], rtol=1e-5, atol=1e-7)


def test_grad_masked_and_normalisers():
    # The batch_2x3 tokens: unclipped ones are (0,1) ratio 1, (0,2) ratio 0.5, (1,0) ratio 2;
    # the padding (logp = -inf, old_logp = NaN) gets exactly 0 and no NaN.
    logp, old, adv, mask = batch_2x3()
    num = np.array([[0.0, -1.0, -0.5], [2.0, 0.0, 0.0]])
    for agg, den in (("token-mean", 5.0), ("seq-mean-token-sum-norm", 6.0)):
        grad = jax.grad(lambda lp: policy_loss(lp, old, adv, mask, agg=agg)[0])(logp)
        np.testing.assert_allclose(grad, num / den, rtol=1e-5, atol=1e-7)
    # seq-mean-token-mean: row 0 tokens over 3 and 2 rows; row 1 over 2 tokens and 2 rows.
    grad = jax.grad(lambda lp: policy_loss(lp, old, adv, mask, agg="seq-mean-token-mean")[0])(
        logp)
    np.testing.assert_allclose(grad, num / np.array([[6.0], [4.0]]), rtol=1e-5, atol=1e-7)


def test_grad_zero_where_dual_clipped():
    logp, old = jnp.array([[math.log(0.5)]]), jnp.array([[math.log(0.1)]])  # ratio 5
    def g(**kw):
        return jax.grad(lambda lp: policy_loss(lp, old, jnp.array([-1.0]), jnp.ones((1, 1)),
                                               **kw)[0])(logp)
    np.testing.assert_allclose(g(), [[5.0]], rtol=1e-5)
    np.testing.assert_allclose(g(dual_clip=3.0), [[0.0]])


def test_extreme_log_ratio_stays_finite():
    # log ratio 100 would overflow exp in float32 (inf loss for A < 0, NaN for A = 0).
    logp, old = jnp.array([[0.0], [0.0]]), jnp.array([[-100.0], [-100.0]])
    loss, m = policy_loss(logp, old, jnp.array([-1.0, 0.0]), jnp.ones((2, 1)))
    grad = jax.grad(lambda lp: policy_loss(lp, old, jnp.array([-1.0, 0.0]),
                                           jnp.ones((2, 1)))[0])(logp)
    assert np.isfinite(loss) and np.isfinite(m["approx_kl"]) and np.all(np.isfinite(grad))


def test_empty_mask_gives_zero_not_nan():
    logp, old, adv, _ = batch_2x3()
    mask = jnp.zeros((2, 3))
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        loss, m = policy_loss(logp, old, adv, mask, agg=agg, dual_clip=3.0)
        assert float(loss) == 0.0
        assert all(float(v) == 0.0 for v in m.values()), m
        grad = jax.grad(lambda lp: policy_loss(lp, old, adv, mask, agg=agg)[0])(logp)
        np.testing.assert_array_equal(grad, np.zeros((2, 3)))


def test_policy_loss_errors():
    args = batch_2x3()
    for bad in (1.0, 0.5):
        with pytest.raises(ValueError, match="dual_clip must be > 1"):
            policy_loss(*args, dual_clip=bad)
    with pytest.raises(ValueError, match="'sum'"):
        policy_loss(*args, agg="sum")
    with pytest.raises(ValueError, match="clip_low"):
        policy_loss(*args, clip_low=1.0)
    with pytest.raises(ValueError, match=r"\[B\]"):
        policy_loss(args[0], args[1], jnp.ones(3), args[3])


# --- aggregation ----------------------------------------------------------------------

LOSS = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


def test_aggregate_modes_differ():
    mask = jnp.array([[1, 1, 1], [1, 0, 0]], jnp.float32)
    # token-mean: (1 + 2 + 3 + 4) / 4; seq-mean-token-mean: (2 + 4) / 2; sum-norm: 10 / 6.
    np.testing.assert_allclose(aggregate(LOSS, mask, "token-mean"), 2.5, rtol=1e-6)
    np.testing.assert_allclose(aggregate(LOSS, mask, "seq-mean-token-mean"), 3.0, rtol=1e-6)
    np.testing.assert_allclose(aggregate(LOSS, mask, "seq-mean-token-sum-norm"), 10 / 6,
                               rtol=1e-6)
    # A bool mask means the same.
    np.testing.assert_allclose(aggregate(LOSS, mask.astype(bool), "seq-mean-token-mean"), 3.0)


def test_aggregate_skips_empty_rows_and_masked_garbage():
    # Row 1 is empty and holds NaN: seq-mean-token-mean averages row 0 alone (1.5, not 0.75).
    loss = LOSS.at[1].set(jnp.nan)
    mask = jnp.array([[1, 1, 0], [0, 0, 0]], jnp.float32)
    np.testing.assert_allclose(aggregate(loss, mask, "token-mean"), 1.5, rtol=1e-6)
    np.testing.assert_allclose(aggregate(loss, mask, "seq-mean-token-mean"), 1.5, rtol=1e-6)
    np.testing.assert_allclose(aggregate(loss, mask, "seq-mean-token-sum-norm"), 0.5, rtol=1e-6)
    grad = jax.grad(lambda l: aggregate(l, mask, "seq-mean-token-mean"))(loss)
    np.testing.assert_allclose(grad, [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])


def test_aggregate_empty_mask_and_errors():
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert float(aggregate(LOSS, jnp.zeros((2, 3)), mode)) == 0.0
        grad = jax.grad(lambda l: aggregate(l, jnp.zeros((2, 3)), mode))(LOSS)
        np.testing.assert_array_equal(grad, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"'mean'.*token-mean"):
        aggregate(LOSS, jnp.ones((2, 3)), "mean")


# --- KL estimators --------------------------------------------------------------------

def test_kl_estimators_hand_values():
    # logp = ln 0.5, ref = ln 0.25: k1 = ln 2, k2 = (ln 2)^2 / 2 = 0.2402265,
    # k3 = 0.5 - (-ln 2) - 1 = 0.1931472.
    # Swapped: k1 = -ln 2, k2 the same, k3 = 2 - ln 2 - 1 = 0.3068528.
    logp = jnp.log(jnp.array([[0.5, 0.25]]))
    ref = jnp.log(jnp.array([[0.25, 0.5]]))
    np.testing.assert_allclose(kl_penalty(logp, ref, "k1"), [[LN2, -LN2]], rtol=1e-6)
    np.testing.assert_allclose(kl_penalty(logp, ref, "k2"), [[0.2402265, 0.2402265]], rtol=1e-6)
    np.testing.assert_allclose(kl_penalty(logp, ref, "k3"), [[0.1931472, 0.3068528]], rtol=1e-5)
    with pytest.raises(ValueError, match=r"'k4'.*'k1', 'k2', 'k3'"):
        kl_penalty(logp, ref, "k4")


def test_kl_estimators_monte_carlo():
    # pi = [0.5, 0.3, 0.2], ref = [0.2, 0.3, 0.5]:
    # KL(pi || ref) = 0.5 ln 2.5 + 0.2 ln 0.4 = 0.3 * 0.9162907 = 0.2748872.
    # k2 is biased: E[(ln pi/ref)^2] / 2 = 0.7 * 0.9162907^2 / 2 = 0.2938564.
    log_pi = jnp.log(jnp.array([0.5, 0.3, 0.2]))
    log_ref = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    x = jax.random.categorical(jax.random.key(0), log_pi, shape=(200_000,))
    logp, ref = log_pi[x][None], log_ref[x][None]
    k1, k2, k3 = (kl_penalty(logp, ref, k) for k in ("k1", "k2", "k3"))
    # Standard errors: k1 0.0016, k2 0.0005, k3 0.0005.
    np.testing.assert_allclose(jnp.mean(k1), 0.2748872, atol=0.008)
    np.testing.assert_allclose(jnp.mean(k3), 0.2748872, atol=0.003)
    np.testing.assert_allclose(jnp.mean(k2), 0.2938564, atol=0.003)
    assert float(jnp.min(k3)) >= 0.0 and float(jnp.min(k1)) < 0.0


# --- entropy, overlong filtering ------------------------------------------------------

def test_entropy_hand_values():
    # Uniform over 4: ln 4 = 1.3862944. [1/2, 1/4, 1/4]: (ln 2)/2 + (ln 4)/2 = 1.0397208.
    # The third position is masked (and would be NaN); shifting logits changes nothing.
    logits = jnp.array([[[0.0, 0.0, 0.0, 0.0],
                         [math.log(0.5) + 100.0, math.log(0.25) + 100.0,
                          math.log(0.25) + 100.0, -jnp.inf],
                         [jnp.nan, 0.0, 0.0, 0.0]]])
    mask = jnp.array([[1, 1, 0]], jnp.float32)
    ent = entropy_from_logits(logits, mask)
    assert ent.dtype == jnp.float32
    np.testing.assert_allclose(ent, (1.3862944 + 1.0397208) / 2, rtol=1e-5)


def test_entropy_filtered_tokens_and_empty_mask():
    logits = jnp.array([[[0.0, 0.0, -jnp.inf]]])
    np.testing.assert_allclose(entropy_from_logits(logits, jnp.ones((1, 1))), LN2, rtol=1e-6)
    grad = jax.grad(lambda z: entropy_from_logits(z, jnp.ones((1, 1))))(logits)
    # At the uniform distribution over the two live tokens the entropy is at its maximum.
    np.testing.assert_allclose(grad, np.zeros((1, 1, 3)), atol=1e-7)
    assert float(entropy_from_logits(logits, jnp.zeros((1, 1)))) == 0.0
    # bf16 logits are upcast: uniform over 4.
    ent = entropy_from_logits(jnp.zeros((1, 1, 4), jnp.bfloat16), jnp.ones((1, 1)))
    assert ent.dtype == jnp.float32
    np.testing.assert_allclose(ent, 1.3862944, rtol=1e-6)


def test_overlong_mask():
    mask = jnp.array([[1, 1, 0], [1, 1, 1]], jnp.float32)
    out = overlong_mask(jnp.array([True, False]), mask)
    np.testing.assert_array_equal(out, [[1, 1, 0], [0, 0, 0]])
    assert out.dtype == jnp.float32
    assert overlong_mask(jnp.array([True, False]), mask.astype(bool)).dtype == jnp.bool_
    # The truncated row then contributes nothing: the loss is row 0's alone, -2.7 / 3.
    logp, old, adv, _ = batch_2x3()
    loss, _ = policy_loss(logp, old, adv, overlong_mask(jnp.array([True, False]),
                                                        jnp.ones((2, 3))))
    np.testing.assert_allclose(loss, -0.9, rtol=1e-5)
