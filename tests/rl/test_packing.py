"""Packed update rows (rl/packing.py): a hand-worked layout, a mask that never crosses
segments, and the packed update's log-probs, loss and gradients against the unpacked one's
on a tiny model with ragged lengths (and the unpacked fallback when rows do not fit); the
config names a bad packing or prefill attention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rl_config
from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, _masks, init_params
from jaxrl.rl import grpo, packing
from jaxrl.rl.logprobs import completion_stats, pack_if_fits
from jaxrl.rollout.decode import Rollout

# Sequences of real length 3, 2, 4, 1 in 2 rows of 5 slots, longest first: m2 -> row 0 at 0
# (fill 4); m0 -> row 1 at 0 (row 0 has 1 slot left); m1 -> row 1 at 3; m3 -> row 0 at 4.
PROMPTS = np.array([[11, 12], [21, 0], [31, 32], [41, 0]], np.int32)  # right-padded
PLEN = np.array([2, 1, 2, 1], np.int32)
COMP = np.array([[13, 0], [22, 0], [33, 34], [0, 0]], np.int32)
CLEN = np.array([1, 1, 2, 0], np.int32)


def test_layout_tokens_and_mask_by_hand():
    layout = packing.pack_layout(jnp.asarray(PLEN + CLEN), rows=2, row_len=5)
    assert bool(layout.fits)
    np.testing.assert_array_equal(layout.row_M, [1, 1, 0, 0])
    np.testing.assert_array_equal(layout.start_M, [0, 3, 0, 4])
    tokens, segments, positions = packing.pack_tokens(layout, *map(jnp.asarray, (
        PROMPTS, PLEN, COMP, CLEN)))
    np.testing.assert_array_equal(tokens, [[31, 32, 33, 34, 41], [11, 12, 13, 21, 22]])
    np.testing.assert_array_equal(segments, [[3, 3, 3, 3, 4], [1, 1, 1, 2, 2]])
    np.testing.assert_array_equal(positions, [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]])
    _, mask = _masks(tokens, None, None, positions, False, segments)
    tri = np.tril(np.ones((5, 5), bool))
    row0 = tri.copy()
    row0[4, :4] = False  # m3 sees only itself
    row1 = tri.copy()
    row1[3:, :3] = False  # m1 does not see m0
    np.testing.assert_array_equal(mask, [row0, row1])
    # The slot predicting completion token i: m0's is its last prompt token (row 1, slot 1).
    x_RT = jnp.arange(10).reshape(2, 5)
    np.testing.assert_array_equal(packing.unpack(layout, x_RT, jnp.asarray(PLEN), 2),
                                  [[6, 7], [8, 9], [1, 2], [4, 4]])
    assert not bool(packing.pack_layout(jnp.array([5, 5, 5]), rows=2, row_len=5).fits)


CFG = preset("tiny", vocab_size=32, dtype="float32", param_dtype="float32")
M, L, N = 8, 5, 9


def batch(seed=0):
    rng = np.random.default_rng(seed)
    prompts = rng.integers(1, 32, (M, L))
    plen = rng.integers(1, L + 1, M)
    prompts = np.where(np.arange(L)[None] < plen[:, None], prompts, 0)  # right-padded
    clen = rng.integers(0, N + 1, M)
    comp = np.where(np.arange(N)[None] < clen[:, None], rng.integers(1, 32, (M, N)), 0)
    return tuple(jnp.asarray(x, jnp.int32) for x in (prompts, plen, comp, clen))


# Packed and unpacked forwards run the same ops per token; only which slots the reductions
# see (and so their association order) differs. Reordering an n-term float32 sum moves it by
# <= 2 gamma_n sum|terms| ~ 2 n u sum|terms| (u = 2^-24; Higham, section 4.2). The longest
# reductions: a weight gradient's sum over the M (L + N) = 112 token slots, and in the
# forward the MLP width 128, so 2 gamma_128 ~ 1.5e-5 relative to the sum of |terms|, which on
# this random-init tiny model stays within a few times the largest result. 1e-4 relative to
# each array's largest magnitude covers that with a margin.
RTOL_OF_MAX = 1e-4


def assert_close(got, want):
    want = np.asarray(want)
    tol = RTOL_OF_MAX * max(np.abs(want).max(), 1e-30)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=tol)


def test_packed_logprobs_loss_and_grads_match_unpacked():
    prompts, plen, comp, clen = batch()
    assert int((plen + clen).sum()) <= packing.packed_rows(M, 0.75) * (L + N)
    params = init_params(CFG, jax.random.key(0))
    model = Decoder(CFG)
    valid = np.arange(N)[None] < np.asarray(clen)[:, None]
    old = jnp.asarray(np.random.default_rng(1).normal(-3.0, 0.3, (M, N)), jnp.float32)
    adv = jnp.asarray(np.random.default_rng(2).normal(size=M), jnp.float32)
    rollout = Rollout(tokens_BN=comp, lengths_B=clen, finished_B=jnp.ones(M, bool),
                      logprobs_BN=old, sample_logprobs_BN=old)
    results = {}
    for name, kw in {"none": dict(packing="none"),
                     "packed": dict(packing="segments", pack_rows_frac=0.75)}.items():
        rl = rl_config(**kw)

        @jax.jit
        def run(p):
            (loss, m), grads = grpo._policy_grads(model, rl, p, prompts, plen, rollout, adv,
                                                  jnp.asarray(valid, jnp.float32), old, None)
            stats = pack_if_fits(lambda layout: completion_stats(
                model, p, prompts, plen, comp, clen, layout), rl.packing, rl.pack_rows_frac,
                prompts, plen, comp, clen)
            return loss, m, grads, stats
        results[name] = run(params)
    loss, m, grads, ((logp, ent), packed) = results["packed"]
    want_loss, want_m, want_grads, ((want_logp, want_ent), _) = results["none"]
    assert bool(packed) and float(m["packing/packed_frac"]) == 1.0
    assert "packing/packed_frac" not in want_m
    assert_close(np.asarray(logp)[valid], np.asarray(want_logp)[valid])
    assert_close(np.asarray(ent)[valid], np.asarray(want_ent)[valid])
    assert_close(loss, want_loss)
    assert_close(m["entropy"], want_m["entropy"])
    jax.tree.map(assert_close, grads, want_grads)
    assert float(np.abs(np.asarray(want_loss))) > 0  # a loss that moves the params
    # One packed row cannot hold the batch: the unpacked forward and gradient run instead.
    rl = rl_config(packing="segments", pack_rows_frac=0.125)
    (loss, m), grads = jax.jit(lambda p: grpo._policy_grads(
        model, rl, p, prompts, plen, rollout, adv, jnp.asarray(valid, jnp.float32), old,
        None))(params)
    assert float(m["packing/packed_frac"]) == 0.0
    assert_close(loss, want_loss)
    jax.tree.map(assert_close, grads, want_grads)
    (logp, _), packed = jax.jit(lambda p: pack_if_fits(lambda layout: completion_stats(
        model, p, prompts, plen, comp, clen, layout), "segments", 0.125, prompts, plen, comp,
        clen))(params)
    assert not bool(packed)
    assert_close(np.asarray(logp)[valid], np.asarray(want_logp)[valid])


def test_config_names_the_bad_packing_and_attention():
    from configs import config_dict, train_config

    for field, value in (("rl.packing", "dense"), ("rl.pack_rows_frac", 0.0),
                         ("model.prefill_attention", "flash")):
        c = config_dict()
        section, name = field.split(".")
        c[section][name] = value
        with pytest.raises(ValueError, match=f"config.{field}"):
            train_config(c)
