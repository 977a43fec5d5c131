"""Position-keyed sampling against independent numpy references (ARCHITECTURE.md, invariant 1).

Distributions are checked by chi-square goodness of fit on 20k draws that differ only in
their uid; every check also shows that the same statistic rejects a nearby wrong reference,
so a pass is evidence and not a test without power.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxrl.rollout.sampling import SamplingParams, gumbel_noise, process_logits, sample

N_DRAWS = 20_000
P_ACCEPT = 1e-3  # fixed keys, so pass/fail is deterministic; a correct sampler fails 0.1% of seeds
P_REJECT = 1e-12  # a wrong reference must be rejected by a wide margin

# Distinct values (no ties for top-k), not sorted by token id (so the sort is exercised).
LOGITS_V = np.array([0.3, 2.0, -0.8, 1.2, 0.0, -2.2, 1.5, 0.9, -0.4, 0.5, -1.5, -1.0], np.float32)


def ref_probs(logits_V, temperature, top_k=0, top_p=1.0, top_p_extra=0):
    """softmax(logits / T), then keep the k largest, then the smallest prefix (by descending
    probability) whose mass >= top_p; renormalised after each step. float64.
    `top_p_extra` keeps that many more tokens than top-p should (a deliberately wrong reference)."""
    z = logits_V.astype(np.float64) / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    if top_k > 0:
        probs[order[top_k:]] = 0.0
        probs /= probs.sum()
    if top_p < 1.0:
        cum = np.cumsum(probs[order])
        n_keep = int(np.argmax(cum >= top_p)) + 1 + top_p_extra
        probs[order[n_keep:]] = 0.0
        probs /= probs.sum()
    return probs


def chi_square_p(counts_V, probs_V):
    """p-value of the counts under `probs`; tokens with zero reference mass are left out here
    (callers assert separately that they never occur)."""
    kept = probs_V > 0
    assert (probs_V[kept] * counts_V.sum()).min() >= 5, "expected counts too small for chi-square"
    return stats.chisquare(counts_V[kept], probs_V[kept] * counts_V.sum()).pvalue


@jax.jit
def _sample(logits_BV, params, key, uids_B, t_B):
    return sample(logits_BV, params, key, uids_B, t_B)


def draw(logits_V, temperature, top_k=0, top_p=1.0, n=N_DRAWS, seed=0, t=3):
    logits_BV = jnp.broadcast_to(jnp.asarray(logits_V), (n, logits_V.shape[0]))
    params = SamplingParams.make(n, temperature=temperature, top_k=top_k, top_p=top_p)
    return _sample(logits_BV, params, jax.random.key(seed), jnp.arange(n, dtype=jnp.int32),
                   jnp.full((n,), t, jnp.int32))


# (temperature, top_k, top_p, a wrong reference as ref_probs kwargs)
CASES = {
    "softmax": (1.0, 0, 1.0, dict(temperature=1.15)),
    "softmax_t0.7": (0.7, 0, 1.0, dict(temperature=0.8)),
    "top_k": (1.0, 5, 1.0, dict(temperature=1.0, top_k=6)),
    "top_p": (1.0, 0, 0.9, dict(temperature=1.0, top_p=0.9, top_p_extra=1)),
    "top_p_t1.3": (1.3, 0, 0.6, dict(temperature=1.3, top_p=0.6, top_p_extra=-1)),
    # top-p applies to the renormalised top-k distribution, not to the full softmax.
    "top_k_then_top_p": (0.8, 6, 0.86, dict(temperature=0.8, top_p=0.86)),
}


@pytest.mark.parametrize("case", CASES)
def test_distribution_matches_numpy_reference(case):
    temperature, top_k, top_p, wrong = CASES[case]
    ref = ref_probs(LOGITS_V, temperature, top_k, top_p)
    if top_p < 1.0:  # keep the top-p cut well away from a float32 rounding boundary
        z = np.sort(ref)[::-1]
        unfiltered = ref_probs(LOGITS_V, temperature, top_k)
        cum = np.cumsum(np.sort(unfiltered)[::-1])
        assert np.abs(cum - top_p).min() > 1e-3, cum
        assert (z > 0).sum() < (unfiltered > 0).sum(), "top-p should drop something here"
    s = draw(LOGITS_V, temperature, top_k, top_p)
    tokens = np.asarray(s.tokens_B)
    counts = np.bincount(tokens, minlength=LOGITS_V.shape[0])

    assert counts[ref == 0].sum() == 0, f"filtered-out tokens were sampled: {counts}"
    assert chi_square_p(counts, ref) > P_ACCEPT, (counts, ref * N_DRAWS)
    wrong_ref = ref_probs(LOGITS_V, **wrong)
    assert not np.allclose(wrong_ref, ref)
    # The same test has the power to reject a nearby wrong distribution: either a token it
    # forbids was drawn, or the chi-square statistic over its support is enormous.
    drew_forbidden = counts[wrong_ref == 0].sum() > 0
    assert drew_forbidden or chi_square_p(counts, wrong_ref) < P_REJECT

    # Log-probs of every draw: raw softmax and the processed (sampling) distribution.
    raw_logp = LOGITS_V.astype(np.float64) - np.log(np.exp(LOGITS_V.astype(np.float64)).sum())
    np.testing.assert_allclose(np.asarray(s.logprobs_B), raw_logp[tokens], atol=1e-5)
    np.testing.assert_allclose(np.asarray(s.sample_logprobs_B), np.log(ref[tokens]), atol=1e-5)


def test_chi_square_rejects_wrong_sampler():
    # Samples drawn at T=1 tested against the T=1 reference pass, against T=0.9 fail.
    counts = np.bincount(np.asarray(draw(LOGITS_V, 1.0).tokens_B), minlength=LOGITS_V.shape[0])
    assert chi_square_p(counts, ref_probs(LOGITS_V, 1.0)) > P_ACCEPT
    assert chi_square_p(counts, ref_probs(LOGITS_V, 0.9)) < P_REJECT


def test_gumbel_noise_is_standard_gumbel():
    # 128k draws: uids and vocabulary entries both vary, so the hash is tested along both.
    noise = np.asarray(gumbel_noise(jax.random.key(7), jnp.arange(4000), jnp.zeros(4000, jnp.int32),
                                    32)).ravel()
    assert stats.kstest(noise, "gumbel_r").pvalue > P_ACCEPT
    assert stats.kstest(noise + 0.05, "gumbel_r").pvalue < P_REJECT


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (3, 1.0), (0, 0.5), (2, 0.3)])
def test_greedy_is_argmax_with_zero_sample_logprob(top_k, top_p):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 32)).astype(np.float32) * 3
    params = SamplingParams.make(64, temperature=0.0, top_k=top_k, top_p=top_p)
    s = _sample(jnp.asarray(logits), params, jax.random.key(0), jnp.arange(64), jnp.arange(64))
    np.testing.assert_array_equal(np.asarray(s.tokens_B), logits.argmax(-1))
    np.testing.assert_array_equal(np.asarray(s.sample_logprobs_B), 0.0)
    l64 = logits.astype(np.float64)
    raw = l64.max(-1) - np.log(np.exp(l64).sum(-1))
    np.testing.assert_allclose(np.asarray(s.logprobs_B), raw, atol=1e-5)


def _per_row_params(b):
    """A batch whose rows differ in every setting (greedy, plain, top-k, top-p, both)."""
    rng = np.random.default_rng(1)
    return SamplingParams(
        temperature_B=jnp.asarray(rng.choice([0.0, 0.7, 1.0, 1.5], b), jnp.float32),
        top_k_B=jnp.asarray(rng.choice([0, 3, 10], b), jnp.int32),
        top_p_B=jnp.asarray(rng.choice([1.0, 0.9, 0.5], b), jnp.float32))


def test_tokens_depend_only_on_key_uid_t_and_row_logits():
    b, v = 24, 40
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(b, v)).astype(np.float32) * 2)
    uids = jnp.asarray(rng.permutation(1000)[:b], jnp.int32)
    t = jnp.asarray(rng.integers(0, 50, b), jnp.int32)
    params = _per_row_params(b)
    key = jax.random.key(3)
    full = _sample(logits, params, key, uids, t)

    perm = jnp.asarray(rng.permutation(b))
    permuted = _sample(logits[perm], params.take(perm), key, uids[perm], t[perm])
    sub = jnp.asarray([5, 17, 2])
    subset = _sample(logits[sub], params.take(sub), key, uids[sub], t[sub])
    for rows, got in ((perm, permuted), (sub, subset)):
        np.testing.assert_array_equal(got.tokens_B, full.tokens_B[rows])
        np.testing.assert_array_equal(got.logprobs_B, full.logprobs_B[rows])
        np.testing.assert_array_equal(got.sample_logprobs_B, full.sample_logprobs_B[rows])
    # Row settings really differ (some greedy, some sampled), so the comparison covers both.
    assert (np.asarray(params.temperature_B) == 0).any() and (np.asarray(params.temperature_B) > 0).any()
    # Another key, or another (uid, t), gives other tokens.
    sampled = np.asarray(params.temperature_B) > 0
    other_key = _sample(logits, params, jax.random.key(4), uids, t)
    other_t = _sample(logits, params, key, uids, t + 1)
    assert (np.asarray(other_key.tokens_B) != np.asarray(full.tokens_B))[sampled].any()
    assert (np.asarray(other_t.tokens_B) != np.asarray(full.tokens_B))[sampled].any()


def test_noise_keyed_by_uid_and_t():
    key = jax.random.key(5)
    uids = jnp.asarray([0, 1, 0, 1, 2, 0], jnp.int32)
    ts = jnp.asarray([0, 0, 1, 1, 1, 0], jnp.int32)
    noise = np.asarray(gumbel_noise(key, uids, ts, 16))
    np.testing.assert_array_equal(noise[0], noise[5])  # same (uid, t) in one batch
    pairs = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 3), (2, 4), (2, 3), (3, 4)]
    for i, j in pairs:  # any change of uid or t gives unrelated noise
        assert not np.allclose(noise[i], noise[j]), (i, j)
    # Alone, in another batch, at another row: the same noise for the same (uid, t).
    alone = np.asarray(gumbel_noise(key, jnp.asarray([2]), jnp.asarray([1]), 16))
    np.testing.assert_array_equal(alone[0], noise[4])
    # (uid, t) is ordered: (1, 2) and (2, 1) are different positions.
    swap = np.asarray(gumbel_noise(key, jnp.asarray([1, 2]), jnp.asarray([2, 1]), 16))
    assert not np.allclose(swap[0], swap[1])
    other = np.asarray(gumbel_noise(jax.random.key(6), uids, ts, 16))
    assert not np.allclose(other, noise)


def test_top_p_one_is_off_in_a_mixed_batch():
    # A peaked row: its float32 cumulative mass reaches 1.0 before the tail. With top_p=1
    # (off) the tail must stay, whether or not another row in the batch uses top-p.
    logits = jnp.asarray([[20.0, 0, 0, 0, 0, 0, 0, 0]] * 2)
    mixed = SamplingParams(temperature_B=jnp.ones(2), top_k_B=jnp.zeros(2, jnp.int32),
                           top_p_B=jnp.asarray([1.0, 0.5]))
    got = np.asarray(process_logits(logits, mixed))
    alone = np.asarray(process_logits(logits[:1], SamplingParams.make(1)))
    np.testing.assert_array_equal(got[0], alone[0])
    assert np.isfinite(got[0]).all()
    assert np.isinf(got[1, 1:]).all()  # the top-p row keeps only the peak


def test_top_k_keeps_ties_and_top_k_over_vocab_is_off():
    logits = jnp.asarray([[3.0, 1.0, 3.0, 2.0, 1.0], [3.0, 1.0, 3.0, 2.0, 1.0]])
    params = SamplingParams(temperature_B=jnp.ones(2), top_k_B=jnp.asarray([1, 99], jnp.int32),
                            top_p_B=jnp.ones(2))
    got = np.asarray(process_logits(logits, params))
    np.testing.assert_array_equal(np.isfinite(got[0]), [True, False, True, False, False])
    np.testing.assert_array_equal(got[1], np.asarray(logits[1]))


@pytest.mark.parametrize("kwargs,named", [
    (dict(temperature=-0.5), "-0.5"),
    (dict(temperature=math.nan), "nan"),
    (dict(top_k=-1), "-1"),
    (dict(top_p=0.0), "0.0"),
    (dict(top_p=-0.2), "-0.2"),
    (dict(top_p=1.5), "1.5"),
    (dict(top_p=math.nan), "nan"),
])
def test_make_rejects_bad_values(kwargs, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        SamplingParams.make(4, **kwargs)


def test_make_fills_per_row_arrays():
    p = SamplingParams.make(3, temperature=0.0, top_k=7, top_p=0.25)
    assert p.temperature_B.shape == p.top_k_B.shape == p.top_p_B.shape == (3,)
    assert p.temperature_B.dtype == jnp.float32 and p.top_k_B.dtype == jnp.int32
    np.testing.assert_array_equal(p.top_k_B, 7)
    np.testing.assert_array_equal(p.top_p_B, np.float32(0.25))
