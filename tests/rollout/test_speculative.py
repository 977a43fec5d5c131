"""Speculative rollouts give exactly the plain decoder's tokens (ARCHITECTURE.md, invariant 1).

The reference is `decode.generate`, the non-speculative loop. A tiny float32 model with
scaled-up weights has peaked logits, so its outputs repeat across seeds and the history
drafts are often right: the checks below also assert that drafts were accepted and that
passes were saved, so the identity is tested on real speculation, not on empty drafts.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rollout_config
from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params
from jaxrl.rollout import drafter, policy, speculative
from jaxrl.rollout.decode import generate
from jaxrl.rollout.policy import MEDIUM, SHORT
from jaxrl.rollout.sampling import SamplingParams

N_NEW = 24
STOP = (7, 48)


@pytest.fixture(scope="module")
def model_params():
    cfg = preset("tiny", dtype="float32", param_dtype="float32")
    # Key 1: a model whose rows stop at several lengths, early enough to be compacted (the
    # power checks below assert both; key 0's model, since init_params draws layer by layer,
    # does not).
    return Decoder(cfg), jax.tree.map(lambda x: 3.0 * x, init_params(cfg, jax.random.key(1)))


def make_prompts(p, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, p).astype(np.int32)
    prompts = rng.integers(10, 128, (p, lengths.max())).astype(np.int32)
    prompts[np.arange(lengths.max())[None, :] >= lengths[:, None]] = 0
    return prompts, lengths


def plain(model, params, prompts_BL, lengths_B, key, sampling):
    b = prompts_BL.shape[0]
    return generate(model, params, jnp.asarray(prompts_BL), jnp.asarray(lengths_B),
                    jnp.arange(b, dtype=jnp.int32), key, sampling, max_new_tokens=N_NEW,
                    stop_tokens=STOP)


def history_from(runs, p, g):
    """[P, R, N] past outputs from plain runs of the same batch (other seeds)."""
    per_run = [np.asarray(drafter.mask_outputs(r.tokens_BN, r.lengths_B)).reshape(p, g, -1)
               for r in runs]
    return jnp.asarray(np.concatenate(per_run, axis=1))


CASES = [  # (P, G, temperature, top_k, top_p, spec overrides)
    (2, 4, 1.0, 0, 1.0, dict(widths=(0, 2, 4))),
    (2, 4, 0.0, 0, 1.0, dict(widths=(0, 4), compaction=False)),
    (3, 2, 0.7, 5, 0.9, dict(widths=(0, 3, 8), length_aware=False)),
    (4, 4, 1.0, 0, 0.8, dict(widths=(0, 2, 4), min_bucket=4, cost_base=0.05)),  # 16, 8, 4 rows
]


def speculate_and_plain(model_params, p, g, sampling, spec, class_P, history_seeds=(2, 1, 3)):
    """(plain decoding, speculative decoding, its stats) of one batch of P prompts x G."""
    model, params = model_params
    prompts_PL, lengths_P = make_prompts(p)
    prompts_BL, lengths_B = np.repeat(prompts_PL, g, 0), np.repeat(lengths_P, g)
    key = jax.random.key(1)
    want = plain(model, params, prompts_BL, lengths_B, key, sampling)
    # History: by default this batch's rollouts under two other seeds and under this one (a
    # policy whose outputs repeat exactly), so drafts are accepted in full, in part and not at
    # all.
    history = history_from([plain(model, params, prompts_BL, lengths_B, jax.random.key(s),
                                  sampling) for s in history_seeds], p, g)
    got, stats = speculative.generate(
        model, params, jnp.asarray(prompts_BL), jnp.asarray(lengths_B),
        jnp.arange(p * g, dtype=jnp.int32), key, sampling, history, jnp.asarray(class_P, jnp.int32),
        spec=spec, max_new_tokens=N_NEW, stop_tokens=STOP, group=g)
    np.testing.assert_array_equal(got.tokens_BN, want.tokens_BN)
    np.testing.assert_array_equal(got.lengths_B, want.lengths_B)
    np.testing.assert_array_equal(got.finished_B, want.finished_B)
    return want, got, stats


@pytest.mark.parametrize("p,g,temperature,top_k,top_p,overrides", CASES)
def test_speculative_equals_plain(model_params, p, g, temperature, top_k, top_p, overrides):
    b = p * g
    want, got, stats = speculate_and_plain(
        model_params, p, g, SamplingParams.make(b, temperature, top_k, top_p),
        rollout_config(verify_impl="reference", **overrides), [MEDIUM] * p)
    np.testing.assert_allclose(got.logprobs_BN, want.logprobs_BN, atol=1e-5)
    np.testing.assert_allclose(got.sample_logprobs_BN, want.sample_logprobs_BN, atol=1e-5)
    # Power: rows stop at different lengths, drafts were accepted, passes were saved.
    assert len(set(np.asarray(want.lengths_B).tolist())) > 1
    assert int(stats.accepted) > 0
    emitted = int(np.asarray(want.lengths_B).sum()) - b  # tokens after the first
    assert int(stats.row_passes) + int(stats.accepted) == emitted
    assert int(stats.passes) < int(np.asarray(want.lengths_B).max()) - 1
    assert (np.asarray(stats.active_N)[:int(stats.passes)] > 0).all()


def test_speculative_equals_plain_with_scanned_layers(model_params):
    """The identity holds with the layers scanned (both loops; the scanned forward is not
    bit-identical to the unrolled one), compaction's row gathers of the stacked cache
    included."""
    model, params = model_params
    p, g = 2, 4  # buckets of 8, 4 and 2 rows, two widths: the cheapest program that compacts
    _, got, stats = speculate_and_plain(
        (model.clone(scan_layers=True), params), p, g, SamplingParams.make(p * g, 1.0),
        rollout_config(verify_impl="reference", widths=(0, 4), min_bucket=2, cost_base=0.05),
        [MEDIUM] * p)
    assert int(stats.accepted) > 0
    assert len(set(np.asarray(stats.bucket_N)[:int(stats.passes)].tolist())) > 1  # compacted


# One bucket of 16 rows, where verifying 4 drafted tokens is not free (policy.free_width): each
# pass decides whether to draft. Cost model 1 + 0.002 * tokens unless overridden.
NO_FREE = dict(widths=(0, 4), compaction=False, class_budgets=(0, 8, 16), verify_impl="reference")


@pytest.mark.parametrize("overrides,cls,drafts", [
    (dict(cost_base=0.0), MEDIUM, False),  # cost per token only: no draft can pay, in any bucket
    (dict(draft_cost=100.0), MEDIUM, False),  # drafting costs 100 passes
    (dict(draft_cost_per_row=6.25), MEDIUM, False),  # so it does at 6.25 for each of 16 rows
    ({}, SHORT, False),  # the short class's budget is 0: no row can gain
    ({}, MEDIUM, True),  # the same batch with budget 8 per row drafts
])
def test_drafting_is_skipped_where_it_cannot_pay(model_params, overrides, cls, drafts):
    p, g = 4, 4
    _, _, stats = speculate_and_plain(model_params, p, g, SamplingParams.make(p * g, 1.0),
                                      rollout_config(**{**NO_FREE, **overrides}), [cls] * p)
    passes = int(stats.passes)
    if drafts:
        assert int(stats.drafted) > 0 and int(stats.accepted) > 0
        assert int(stats.skipped) < passes
    else:
        assert int(stats.drafted) == 0 and int(stats.skipped) == passes
        assert (np.asarray(stats.width_N)[:passes] == 0).all()


def test_a_bucket_that_stops_drafting_stays_plain(model_params):
    # Drafting priced at one pass (draft_cost 1): with width 4 it pays only while a live row
    # gains more than (1 + 1 + 0.002 * 80) / (1 + 0.002 * 16) - 1 = 1.09 accepted tokens per
    # pass. The history holds other seeds' rollouts only, so the gain falls from its prior
    # (4) below that, and from that pass on the bucket's passes are plain (the test sits in
    # the loop's predicate: a bucket that stopped does not start again).
    p, g = 4, 4
    _, _, stats = speculate_and_plain(model_params, p, g, SamplingParams.make(p * g, 1.0),
                                      rollout_config(**{**NO_FREE, "draft_cost": 1.0}),
                                      [MEDIUM] * p, history_seeds=(2, 3))
    passes = int(stats.passes)
    width_N = np.asarray(stats.width_N)[:passes]
    first_plain = int(np.argmax(width_N == 0))
    assert width_N[0] == 4 and 0 < first_plain and int(stats.skipped) == passes - first_plain
    assert (width_N[first_plain:] == 0).all() and int(stats.drafted) > 0
    assert int(stats.accepted) / int(stats.drafting_row_passes) < 1.09
    assert int(stats.drafting_row_passes) == np.asarray(stats.active_N)[:first_plain].sum()


@pytest.mark.parametrize("widths", [(0, 4), (0,)])
def test_compaction_shrinks_buckets(model_params, widths):
    """Also widths=(0,): no drafter in the graph, one token per row per pass, i.e. plain
    decoding with finished rows compacted (the baseline that isolates speculation)."""
    model, params = model_params
    p, g = 4, 4
    prompts_PL, lengths_P = make_prompts(p, seed=3)
    prompts_BL, lengths_B = np.repeat(prompts_PL, g, 0), np.repeat(lengths_P, g)
    sampling = SamplingParams.make(p * g, 1.0)
    key = jax.random.key(5)
    want = plain(model, params, prompts_BL, lengths_B, key, sampling)
    empty = jnp.full((p, 1, N_NEW), -1, jnp.int32)
    spec = rollout_config(widths=widths, min_bucket=2, cost_base=1.0, cost_per_token=0.0025,
                          verify_impl="reference")
    got, stats = speculative.generate(
        model, params, jnp.asarray(prompts_BL), jnp.asarray(lengths_B),
        jnp.arange(p * g, dtype=jnp.int32), key, sampling, empty,
        jnp.full((p,), MEDIUM, jnp.int32), spec=spec, max_new_tokens=N_NEW,
        stop_tokens=STOP, group=g)
    np.testing.assert_array_equal(got.tokens_BN, want.tokens_BN)
    passes = int(stats.passes)
    buckets = np.asarray(stats.bucket_N)[:passes]
    active = np.asarray(stats.active_N)[:passes]
    assert (np.diff(buckets) <= 0).all() and buckets[-1] < p * g  # it did shrink
    assert (active <= buckets).all()  # every live row was in the bucket
    if widths == (0,):
        assert int(stats.drafted) == 0
        assert passes == int(np.asarray(want.lengths_B).max()) - 1
    else:  # buckets of <= 10 rows verify the widest width with no choice (policy.free_width)
        free = [policy.free_width(widths, int(r), spec.cost_base, spec.cost_per_token,
                                  spec.draft_cost + spec.draft_cost_per_row * int(r))
                for r in buckets]
        assert None in free and 1 in free, buckets
        assert (np.asarray(stats.width_N)[:passes][np.equal(free, 1)] == 4).all()


