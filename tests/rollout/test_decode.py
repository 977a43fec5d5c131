"""The prefill + decode engine against references built from full forward passes (no KV cache).

A tiny float32 model with its random weights scaled up, so its logits and attention are far
from uniform and a wrong position, mask or cache slot changes the answer.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params
from jaxrl.rollout.decode import generate
from jaxrl.rollout.sampling import SamplingParams, process_logits, sample

N_NEW = 8
LENGTHS = np.array([5, 2, 7, 3])  # right-padded prompts of different lengths


@pytest.fixture(scope="module")
def setup():
    cfg = preset("tiny", dtype="float32", param_dtype="float32")
    params = jax.tree.map(lambda x: 3.0 * x, init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, cfg.vocab_size, (len(LENGTHS), LENGTHS.max()))
    prompts[np.arange(LENGTHS.max())[None, :] >= LENGTHS[:, None]] = 0
    uids = np.array([11, 3, 7, 40])
    return Decoder(cfg), params, prompts, uids


def run(setup, rows=None, *, seed=1, sampling=None, max_new_tokens=N_NEW, **kw):
    """`generate` on a subset of the batch, its prompts trimmed to the subset's longest."""
    model, params, prompts, uids = setup
    rows = np.arange(len(LENGTHS)) if rows is None else np.asarray(rows)
    lengths = LENGTHS[rows]
    sampling = sampling or SamplingParams.make(len(LENGTHS))
    return generate(model, params, jnp.asarray(prompts[rows, :lengths.max()], jnp.int32),
                    jnp.asarray(lengths, jnp.int32), jnp.asarray(uids[rows], jnp.int32),
                    jax.random.key(seed), sampling.take(jnp.asarray(rows)),
                    max_new_tokens=max_new_tokens, **kw)


T_MAX = LENGTHS.max() + N_NEW


def full_logits(setup, row, completion):
    """Logits [T, V] of one full forward pass (no cache) over prompt + completion.

    The sequence is right-padded to T_MAX so that one compiled forward serves every call;
    causal attention keeps the padding from reaching the positions returned."""
    model, params, prompts, _ = setup
    seq = np.concatenate([prompts[row, :LENGTHS[row]], completion]).astype(np.int32)
    padded = np.zeros((1, T_MAX), np.int32)
    padded[0, :len(seq)] = seq
    return _forward(model, params, jnp.asarray(padded))[0, :len(seq)]


@jax.jit(static_argnames="model")
def _forward(model, params, tokens_BT):
    return model.apply({"params": params}, tokens_BT)


def np_(x):
    return np.asarray(x)


def test_same_seed_same_rollout_other_seed_other_tokens(setup):
    a, b, c = run(setup, seed=1), run(setup, seed=1), run(setup, seed=2)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert (np_(a.tokens_BN) != np_(c.tokens_BN)).mean() > 0.5
    # At temperature 1 the model is not near-deterministic, so that difference means something.
    assert np_(a.sample_logprobs_BN).mean() < -0.5


def test_rows_do_not_depend_on_batch(setup):
    # Per-row sampling settings differ too: sampled, greedy, top-k, top-k + top-p.
    sampling = SamplingParams(temperature_B=jnp.asarray([1.0, 0.0, 0.8, 1.2]),
                              top_k_B=jnp.asarray([0, 0, 20, 10], jnp.int32),
                              top_p_B=jnp.asarray([1.0, 1.0, 1.0, 0.9]))
    full = run(setup, sampling=sampling)
    for rows in ([2, 0, 3, 1], [3, 1], [1, 3], [2], [1]):
        part = run(setup, rows, sampling=sampling)
        np.testing.assert_array_equal(part.tokens_BN, np_(full.tokens_BN)[rows], err_msg=str(rows))
        np.testing.assert_array_equal(part.lengths_B, np_(full.lengths_B)[rows])
        np.testing.assert_array_equal(part.finished_B, np_(full.finished_B)[rows])
        np.testing.assert_allclose(part.logprobs_BN, np_(full.logprobs_BN)[rows], atol=1e-5)
        np.testing.assert_allclose(part.sample_logprobs_BN, np_(full.sample_logprobs_BN)[rows],
                                   atol=1e-5)


def test_greedy_matches_uncached_greedy_loop(setup):
    out = run(setup, sampling=SamplingParams.make(len(LENGTHS), temperature=0.0))
    for row in range(len(LENGTHS)):
        completion = []
        for _ in range(N_NEW):
            completion.append(int(jnp.argmax(full_logits(setup, row, np.array(completion))[-1])))
        np.testing.assert_array_equal(out.tokens_BN[row], completion, err_msg=f"row {row}")
    np.testing.assert_array_equal(out.sample_logprobs_BN, 0.0)
    assert len(set(np_(out.tokens_BN).ravel())) > 4  # not a degenerate repeat-one-token model


def test_logprobs_and_tokens_match_teacher_forcing(setup):
    sampling = SamplingParams(temperature_B=jnp.asarray([1.0, 0.7, 1.0, 1.3]),
                              top_k_B=jnp.asarray([0, 0, 12, 30], jnp.int32),
                              top_p_B=jnp.asarray([1.0, 0.9, 1.0, 0.8]))
    out = run(setup, sampling=sampling)
    _, _, prompts, uids = setup
    key = jax.random.key(1)
    for row in range(len(LENGTHS)):
        n = int(out.lengths_B[row])
        completion = np_(out.tokens_BN[row, :n])
        # Position p's logits predict token p + 1: completion token j from prompt_len - 1 + j.
        logits_NV = full_logits(setup, row, completion)[LENGTHS[row] - 1:][:n]
        want_lp = jax.nn.log_softmax(logits_NV, -1)[jnp.arange(n), completion]
        np.testing.assert_allclose(out.logprobs_BN[row, :n], want_lp, atol=1e-4)
        # Every token is the position-keyed sample (uid, t = 0, 1, ...) from these logits,
        # which is what speculative decoding must reproduce.
        row_params = sampling.take(jnp.full((n,), row))
        want, processed = _sample_and_process(logits_NV, row_params, key,
                                              jnp.full((n,), uids[row]), jnp.arange(n))
        np.testing.assert_array_equal(out.tokens_BN[row, :n], want.tokens_B, err_msg=f"row {row}")
        np.testing.assert_allclose(out.sample_logprobs_BN[row, :n],
                                   processed[jnp.arange(n), completion], atol=1e-4)


@jax.jit
def _sample_and_process(logits_NV, params, key, uids_N, t_N):
    return (sample(logits_NV, params, key, uids_N, t_N),
            jax.nn.log_softmax(process_logits(logits_NV, params), -1))


def test_stop_tokens_end_rows_and_max_new_tokens_cuts(setup):
    ref = run(setup)  # no stop tokens: every row runs to max_new_tokens
    assert not np_(ref.finished_B).any() and (np_(ref.lengths_B) == N_NEW).all()
    toks = np_(ref.tokens_BN)

    def check(stop, pad_id):
        assert pad_id not in stop
        out = run(setup, stop_tokens=stop, pad_id=pad_id)
        kinds = set()
        for row in range(len(LENGTHS)):
            hits = np.flatnonzero(np.isin(toks[row], stop))
            n = int(hits[0]) + 1 if hits.size else N_NEW
            kinds.add(bool(hits.size))
            assert int(out.lengths_B[row]) == n, row
            assert bool(out.finished_B[row]) == bool(hits.size), row
            # Up to and including the stop token: the same tokens as without stop tokens.
            np.testing.assert_array_equal(out.tokens_BN[row, :n], toks[row, :n])
            np.testing.assert_allclose(out.logprobs_BN[row, :n], ref.logprobs_BN[row, :n],
                                       atol=1e-6)
            np.testing.assert_array_equal(out.tokens_BN[row, n:], pad_id)
            np.testing.assert_array_equal(out.logprobs_BN[row, n:], 0.0)
            np.testing.assert_array_equal(out.sample_logprobs_BN[row, n:], 0.0)
        return kinds

    # Two rows stop mid-way on different stop tokens; the others are cut at max_new_tokens.
    stop_some = (int(toks[0, 2]), int(toks[2, 4]))
    assert check(stop_some, pad_id=next(p for p in range(1, 128) if p not in stop_some)) == {
        True, False}
    # Every row stops within two tokens, so the loop exits early; pad must still fill the rest.
    stop_all = tuple(sorted({int(t) for t in toks[:, 1]}))
    assert check(stop_all, pad_id=next(p for p in range(1, 128) if p not in stop_all)) == {True}


def test_invalid_inputs_raise(setup):
    model, params, prompts, uids = setup
    args = dict(uids_B=jnp.arange(4), base_key=jax.random.key(0), sampling=SamplingParams.make(4))
    good_prompts = jnp.asarray(prompts, jnp.int32)
    good_lengths = jnp.asarray(LENGTHS, jnp.int32)
    with pytest.raises(ValueError, match=r"\(7,\)"):
        generate(model, params, good_prompts[0], good_lengths, max_new_tokens=4, **args)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        generate(model, params, good_prompts, good_lengths[:3], max_new_tokens=4, **args)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        generate(model, params, good_prompts, good_lengths, max_new_tokens=0, **args)
