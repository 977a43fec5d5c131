"""Lossless speculative decoding from rollout history (DAS), with finished rows compacted.

Each pass drafts up to `k` tokens per row (`drafter.draft`), runs the policy once over
`[last token, draft_1 .. draft_k]` at each row's own cache offset, and keeps the longest
draft prefix whose tokens equal the position-keyed samples, plus the next sample (the
bonus token). The samples come from the same rule as plain decoding
(`kernels/sampling.py`), so the tokens are the ones plain decoding picks from the same
logits (ARCHITECTURE.md, invariant 1). Rejected positions are rolled back by setting the
row's cache length; their stale keys are never read and get overwritten.

The number of drafted tokens verified per row (the width) is one of a few compiled ones,
chosen each pass by the cost model (`policy.choose_width`, the drafter's probabilities scaled
by this rollout's accepted / forecast tokens so far: `policy.calibration`), or fixed to the
widest in buckets so small that drafting and verifying it cost about as much as a plain pass
(`policy.free_width`).
`widths=(0,)` drafts nothing: plain decoding with the compaction below, the baseline that
isolates what speculation adds.

Speculation must never cost more than it gains, so the drafter itself (corpus build + draft)
is skipped where the same cost model, with a bucket of R rows' drafting priced at
`draft_cost + draft_cost_per_row * R` (the corpus is built for every prompt whatever the
bucket; contexts and drafts are per row; timed as whole passes of this loop, drafting
against plain: `drafting_cost_model`), says no width > 0 pays: per bucket when compiled,
if not even perfect drafts of the largest budget would pay (`policy.drafting_can_pay`: the
bucket's program has no drafter), and otherwise from the first pass at which this rollout's
record so far, the accepted tokens per live row of its drafting passes and their mean width,
predicts no gain at this bucket's costs (`policy.drafting_pays`; rows of a class with budget
0, the DAS paper's short class, gain nothing). Each bucket runs two loops: drafting passes
while the loop's predicate, which includes that test, holds, then plain passes until its
rows fit the next bucket. A test in the predicate costs nothing (the host reads the
predicate after every pass anyway), where a per-pass `lax.cond` cost a second device-to-host
sync on a GPU; the price is that a bucket that stopped drafting does not start again (the
next bucket tests afresh, with the larger budgets of fewer live rows).

Finished rows stop costing compute: the batch runs in buckets of B, B/2, B/4, ... rows;
once the live rows fit the next bucket they are gathered into it (cache included), and
results are written back to the full-batch arrays by row index.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl import sharding
from jaxrl.models import kv_cache
from jaxrl.models.decoder import Decoder, for_forwards, init_params, param_axes
from jaxrl.rollout import drafter, policy
from jaxrl.rollout.decode import Rollout, _validate
from jaxrl.rollout.sampling import SamplingParams, position_keys, sample
from kernels.speculative_sampling import speculative_sample

if TYPE_CHECKING:  # das.py imports this module
    from jaxrl.rollout.das import RolloutConfig


@struct.dataclass
class SpecStats:
    """What the passes did; per-class arrays are indexed by `policy.CLASS_NAMES`."""

    passes: jax.Array  # int32: verification passes
    row_passes: jax.Array  # int32: live rows summed over passes (a plain decode's steps)
    drafting_row_passes: jax.Array  # int32: live rows summed over the passes that drafted
    drafted: jax.Array  # int32: draft tokens verified
    accepted: jax.Array  # int32: draft tokens accepted
    forecast: jax.Array  # float32: the drafter's running probabilities of the verified drafts
    drafted_C: jax.Array  # int32 [3]
    accepted_C: jax.Array  # int32 [3]
    rows_C: jax.Array  # int32 [3] rows of each class
    active_N: jax.Array  # int32: live rows at each pass; -1 past `passes`
    bucket_N: jax.Array  # int32: bucket size (rows computed) at each pass; 0 past `passes`
    width_N: jax.Array  # int32: drafted tokens verified per row at each pass
    skipped: jax.Array  # int32: passes that did not draft (the cost model saw no gain)


@struct.dataclass
class _Out:
    """The full-batch results, written by row index."""

    tokens_BN: jax.Array
    logprobs_BN: jax.Array
    sample_logprobs_BN: jax.Array
    lengths_B: jax.Array
    stopped_B: jax.Array


def verify(apply, tokens_RT: jax.Array, cache, num_R: jax.Array, t0_R: jax.Array,
           uids_R: jax.Array, base_key: jax.Array, sampling_R: SamplingParams, impl: str):
    """One verification pass: the policy over `tokens_RT` = [last token, k drafts] at each
    row's cache offset, then the position-keyed samples of the k + 1 positions (t0_R + j)
    and the longest accepted prefix of each row's first `num_R` drafts
    (`speculative_sample`). Returns (cache, tokens_RT, accepted_R, logprobs_RT,
    sample_logprobs_RT). The rollout's passes and the cost model's timer both run this."""
    r, t = tokens_RT.shape
    logits_RTV, cache = apply(tokens_RT, cache=cache)
    t_RT = t0_R[:, None] + jnp.arange(t)
    keys_RT2 = position_keys(base_key, jnp.repeat(uids_R, t), t_RT.reshape(-1)).reshape(r, t, 2)
    return (cache, *speculative_sample(
        logits_RTV, tokens_RT[:, 1:], num_R, sampling_R.temperature_B, sampling_R.top_k_B,
        sampling_R.top_p_B, keys_RT2, impl=impl))


def timing_params(model: Decoder, layout) -> dict:
    """Random weights placed by `layout`, in the form the model's forwards read
    (`for_forwards`), for the timers (only the time matters): made once per fit and shared
    by its verification and pass loops."""
    return for_forwards(model, sharding.shard_params(init_params(model.cfg, jax.random.key(0)),
                                                     param_axes(model.cfg), layout))


def verification_timer(model: Decoder, params, verify_impl: str, context: int = 256):
    """`loop(rows, k)`: the `policy.TimedLoop` of verification passes (`verify`, k drafts on
    `rows` rows over a cache of `context` filled slots, temperature 1) as the rollout runs
    them, with `params` (`timing_params`)."""
    apply = lambda params: functools.partial(model.apply, {"params": params})  # noqa: E731

    def body(i, carry, params):
        cache, tokens_RT = carry
        r, t = tokens_RT.shape
        new, sampled_RT, *_ = verify(
            apply(params), tokens_RT, cache, jnp.full((r,), t - 1, jnp.int32),
            cache.lengths_B - context + i, jnp.arange(r), jax.random.key(0),
            SamplingParams.make(r), verify_impl)
        # The next input is this output, so no pass can be hoisted out of the loop.
        return new.replace(lengths_B=cache.lengths_B), sampled_RT

    def loop(rows, k):
        cache = kv_cache.init_cache(model.cfg, rows, context + k + 1,
                                    stacked=model.scan_layers).replace(
            lengths_B=jnp.full((rows,), context, jnp.int32))
        return policy.timed_loop(body, (cache, jnp.zeros((rows, k + 1), jnp.int32)), params)

    return loop


def pass_timer(model: Decoder, params, spec: RolloutConfig, batch: int, group: int,
               prompt_len: int, max_new_tokens: int, vocab: int = 12):
    """`loop(rows, drafting)`: the `policy.TimedLoop` of one pass of the rollout's loop
    (`_passes`' `one_pass`, and after a drafting pass the drafting loop's test `pays`) over
    `rows` rows of a `batch`-row batch, as `generate` runs it. `params` (`timing_params`),
    and prompts, outputs and a full history window of random tokens from a small
    vocabulary, so that the drafter finds matches (its scans read the whole padded corpus:
    random tokens cost what real ones do). A drafting pass verifies the widest width through a width branch: the
    timer's own widths and costs make `choose_width` pick it and keep the branch
    (`free_width` None)."""
    b, n, l, kmax = batch, max_new_tokens, prompt_len, spec.max_draft
    p = max(b // group, 1)
    rng = np.random.default_rng(0)
    tokens = lambda *shape: jnp.asarray(rng.integers(3, vocab, shape), jnp.int32)  # noqa: E731
    prompts_PL, plen_P = tokens(p, l), jnp.full((p,), l, jnp.int32)
    history_PRN, outputs_BN = tokens(p, spec.window * group, n), tokens(b, n)
    # Widths 0 and the widest at equal cost (c_tok too small to change a float sum): any
    # drafted token makes the widest the best, and drafting's cost keeps the branch.
    timing = spec.replace(widths=(0, kmax), cost_base=1.0, cost_per_token=1e-30,
                          draft_cost=1.0, draft_cost_per_row=0.0)
    t0 = max((n - kmax - 8) // 2, 1)  # emitted tokens before a pass; all rows stay live

    def loop(rows, drafting):
        rows_R = jnp.arange(rows, dtype=jnp.int32) * (b // rows)  # spread over the prompts

        def passes(params):
            apply = functools.partial(model.apply, {"params": params})
            return _passes(apply, timing, batch=b, max_new_tokens=n,
                           stop_S=jnp.asarray((-1,), jnp.int32), pad_id=0,
                           class_B=jnp.full((b,), policy.LONG, jnp.int32),
                           uids_B=jnp.arange(b, dtype=jnp.int32), base_key=jax.random.key(0),
                           sampling=SamplingParams.make(b), prompts_PL=prompts_PL,
                           plen_P=plen_P, history_PRN=history_PRN, layout=None)

        def body(i, carry, params):
            _, pays, one_pass = passes(params)
            _, cache, last_R, out, stats, next_R = carry
            t = t0 + i % 8  # varied, so that nothing is hoisted out of the loop
            out = out.replace(lengths_B=jnp.full((b,), t, jnp.int32))
            cache = cache.replace(lengths_B=jnp.full((rows,), l + t - 1, jnp.int32))
            carry = one_pass((rows_R, cache, last_R, out, stats, next_R), rows, drafting)
            if drafting:  # the drafting loop's predicate, folded in so that it is computed
                stats = carry[4]
                carry = carry[:4] + (stats.replace(skipped=stats.skipped + pays(
                    carry, rows).astype(jnp.int32)),) + carry[5:]
            return carry

        out = _Out(tokens_BN=outputs_BN, logprobs_BN=jnp.zeros((b, n), jnp.float32),
                   sample_logprobs_BN=jnp.zeros((b, n), jnp.float32),
                   lengths_B=jnp.full((b,), t0, jnp.int32), stopped_B=jnp.zeros((b,), bool))
        cache = kv_cache.init_cache(model.cfg, rows, l + n + kmax + 1, stacked=model.scan_layers)
        budgets = passes(params)[0]
        init = (rows_R, cache, jnp.zeros((rows,), jnp.int32), out,
                _fresh_stats(jnp.full((b,), policy.LONG, jnp.int32), n), budgets(rows_R, out))
        return policy.timed_loop(body, init, params)

    return loop


def drafting_loops(model: Decoder, params, spec: RolloutConfig, batch: int, group: int,
                   prompt_len: int, max_new_tokens: int) -> dict:
    """`{(rows, drafting): TimedLoop}`: the passes `drafting_line` is fitted to, a drafting
    and a plain one at rows = batch and batch / 8."""
    loop = pass_timer(model, params, spec, batch, group, prompt_len, max_new_tokens)
    return {(rows, drafting): loop(rows, drafting)
            for rows in sorted({batch, max(batch // 8, 1)}) for drafting in (True, False)}


def drafting_line(seconds: dict, max_draft: int, cost_per_token: float) -> tuple[float, float]:
    """`(draft_s, draft_per_row_s)`: a drafting pass over R rows costs `draft_s +
    draft_per_row_s * R` more than a plain one, besides verifying its drafts (`cost_per_token`
    per token, priced apart). `seconds` times `drafting_loops`' passes as the loop runs
    them, so the line holds all a drafting pass adds: the corpus (built for every prompt
    whatever R) and the drafts, the width choice and its branch, the drafting loop's test
    and the bookkeeping of a wider pass."""
    rows = sorted({r for r, _ in seconds})
    extra = [seconds[r, True] - seconds[r, False] - cost_per_token * r * max_draft
             for r in rows]
    if len(rows) == 1:
        return max(extra[0], 0.0), 0.0
    per_row = max((extra[1] - extra[0]) / (rows[1] - rows[0]), 0.0)
    return max(extra[1] - per_row * rows[1], 0.0), per_row


def drafting_cost_model(model: Decoder, layout, spec: RolloutConfig, batch: int, group: int,
                        prompt_len: int, max_new_tokens: int,
                        cost_per_token: float) -> tuple[float, float]:
    """`drafting_line` of `drafting_loops`, timed now."""
    loops = drafting_loops(model, timing_params(model, layout), spec, batch, group,
                           prompt_len, max_new_tokens)
    return drafting_line(dict(zip(loops, policy.loops_seconds(loops.values()))),
                         spec.max_draft, cost_per_token)


def measure_cost_model(model: Decoder, layout, batch: int, widths: tuple[int, ...],
                       verify_impl: str, drafting: tuple = ()):
    """`(c_base_s, c_tok_s, draft)` timed on this device (`policy.fitted_cost_model` keeps
    them): the verification line through the narrowest and widest widths at two bucket
    sizes (the model is linear in tokens), and `draft` = `drafting_line` when `drafting`
    gives its (spec, group, prompt_len, max_new_tokens), else None. All the loops (8 with
    drafting) compile at once before any is timed: each is a program, and the start of a
    cold run waits for them."""
    params = timing_params(model, layout)
    loop = verification_timer(model, params, verify_impl)
    shapes = [(rows, k) for rows in (batch, max(batch // 8, 1)) for k in (min(widths), max(widths))]
    loops = [loop(rows, k) for rows, k in shapes]
    passes = drafting_loops(model, params, drafting[0], batch, *drafting[1:]) if drafting else {}
    seconds = policy.loops_seconds([*loops, *passes.values()])
    c_base, c_tok = policy.fit_cost_model(np.asarray([r * (k + 1) for r, k in shapes]),
                                          np.asarray(seconds[:len(shapes)]))
    draft = (drafting_line(dict(zip(passes, seconds[len(shapes):])), drafting[0].max_draft,
                           c_tok) if drafting else None)
    return c_base, c_tok, draft


def _bucket_sizes(b: int, spec: RolloutConfig) -> list[int]:
    if not spec.compaction:
        return [b]
    sizes = [b]
    while sizes[-1] > spec.min_bucket:
        nxt = 1 << ((sizes[-1] - 1).bit_length() - 1)  # the power of two below
        if nxt < spec.min_bucket:
            break
        sizes.append(nxt)
    return sizes


def _fresh_stats(class_B: jax.Array, n: int) -> SpecStats:
    zeros3 = jnp.zeros((3,), jnp.int32)
    return SpecStats(passes=jnp.int32(0), row_passes=jnp.int32(0),
                     drafting_row_passes=jnp.int32(0), drafted=jnp.int32(0),
                     accepted=jnp.int32(0), forecast=jnp.float32(0), drafted_C=zeros3,
                     accepted_C=zeros3, rows_C=jnp.bincount(class_B, length=3).astype(jnp.int32),
                     active_N=jnp.full((n,), -1, jnp.int32), bucket_N=jnp.zeros((n,), jnp.int32),
                     width_N=jnp.zeros((n,), jnp.int32), skipped=jnp.int32(0))


def _draft_cost(spec: RolloutConfig, rows: int) -> float:
    """The cost model's price of drafting for a bucket of `rows` rows (`cost_base`'s units)."""
    return spec.draft_cost + spec.draft_cost_per_row * rows


def _passes(apply, spec: RolloutConfig, *, batch: int, max_new_tokens: int, stop_S, pad_id,
            class_B, uids_B, base_key, sampling, prompts_PL, plen_P, history_PRN, layout):
    """The decode loop's pieces over one batch, as functions of the loop's carry `(rows_R,
    cache, last_R, out, stats, (live_R, budget_R, active))`: `budgets(rows_R, out)` (the
    carry's last field), `pays(carry, size)` (the drafting loop's test) and
    `one_pass(carry, size, drafting)`. `generate` runs them in its loops and `pass_timer`
    times them, so that the cost model prices the pass the loop runs."""
    b, n, kmax = batch, max_new_tokens, spec.max_draft

    def live_of(out, rows_R):
        return ~out.stopped_B[rows_R] & (out.lengths_B[rows_R] < n)

    def verify_pass(k, rows_R, cache, last_R, d, t0_R, width=None):
        """One forward over [last, draft_1..draft_k]; outputs padded to `width` + 1 columns
        (the branches of a width choice return one shape; a plain pass keeps its 1)."""
        drafts_RK = jnp.where(jnp.arange(k) < d.num_B[:, None], d.tokens_BD[:, :k], pad_id)
        cache, tokens_RT, accepted_R, lp_RT, slp_RT = verify(
            apply, jnp.concatenate([last_R[:, None], drafts_RK], 1), cache,
            jnp.minimum(d.num_B, k), t0_R, uids_B[rows_R], base_key, sampling.take(rows_R),
            spec.verify_impl)
        pad = lambda x: jnp.pad(x, ((0, 0), (0, (k if width is None else width) - k)))  # noqa: E731
        return cache, pad(tokens_RT), accepted_R, pad(lp_RT), pad(slp_RT)

    def budgets(rows_R, out):
        """(live_R, budget_R, active) of the next pass: each live row's draft budget, 0
        elsewhere; the batch's live rows. Each pass computes them for the next one, whose
        loop predicate and body both read them from the carry."""
        live_R = live_of(out, rows_R)
        active = jnp.sum(~out.stopped_B & (out.lengths_B < n))
        return live_R, jnp.where(live_R, policy.draft_budgets(
            class_B[rows_R], active, b, spec.class_budgets, kmax, spec.length_aware),
            0), active

    cost = (spec.cost_base, spec.cost_per_token)
    draft_cost_of = functools.partial(_draft_cost, spec)

    def pays(carry, size):
        """Whether drafting is expected to pay on the next pass (`policy.drafting_pays`)."""
        live_R, budget_R, _ = carry[5]
        stats = carry[4]
        gain = policy.predicted_gain(stats.accepted, stats.drafting_row_passes, kmax)
        drafting_passes = stats.passes - stats.skipped
        width = policy.expected_width(jnp.sum(stats.width_N),  # 0 at skipped passes
                                      drafting_passes, kmax)
        return policy.drafting_pays(budget_R, live_R, gain, width, size, *cost,
                                    draft_cost_of(size))

    def one_pass(carry, size, drafting):
        rows_R, cache, last_R, out, stats, (live_R, budget_R, active) = carry
        t0_R = out.lengths_B[rows_R]
        free = policy.free_width(spec.widths, size, *cost, draft_cost_of(size))

        def plain():  # width 0, nothing drafted; returns what `speculate` does
            empty = drafter.Draft(jnp.full((size, kmax), drafter.SEP, jnp.int32),
                                  jnp.zeros((size,), jnp.int32),
                                  jnp.zeros((size, kmax), jnp.float32),
                                  jnp.zeros((size,), jnp.int32))
            return verify_pass(0, rows_R, cache, last_R, empty, t0_R) + (
                empty.num_B, jnp.int32(spec.widths.index(0)), jnp.int32(1), jnp.float32(0))

        def speculate():  # draft, choose the width, verify
            d = drafter.pass_drafts(spec, prompts_PL, plen_P, out.tokens_BN, out.lengths_B,
                                    history_PRN, rows_R, budget_R, layout)
            if free is None:
                calibration = policy.calibration(stats.accepted, stats.forecast, kmax)
                w = policy.choose_width(d.probs_BD, live_R, spec.widths, size, *cost,
                                        calibration)
                branches = [functools.partial(verify_pass, k, width=kmax) for k in spec.widths]
                verified = jax.lax.switch(w, branches, rows_R, cache, last_R, d, t0_R)
            else:
                w = free
                verified = verify_pass(spec.widths[w], rows_R, cache, last_R, d, t0_R)
            k_R = jnp.minimum(d.num_B, jnp.asarray(spec.widths)[w])
            forecast_R = jnp.where(jnp.arange(kmax) < k_R[:, None], d.probs_BD, 0.0).sum(1)
            return verified + (k_R, jnp.int32(w), jnp.int32(0),  # calibration's input:
                               policy.fixed_sum(jnp.where(live_R, forecast_R, 0.0)))  # exact

        result = speculate() if drafting else plain()
        new_cache, tokens_RT, accepted_R, lp_RT, slp_RT, k_R, w, skip, forecast = result

        # Emit the accepted drafts and the bonus token, cut at a stop token and at n.
        j_T = jnp.arange(tokens_RT.shape[1])
        emit_R = jnp.minimum(accepted_R + 1, n - t0_R)  # first at n: a stop past it is not a stop
        is_stop_RT = jnp.isin(tokens_RT, stop_S) & (j_T < emit_R[:, None])
        first_stop_R = jnp.argmax(is_stop_RT, axis=1)
        stops_R = jnp.any(is_stop_RT, axis=1)
        emit_R = jnp.where(live_R, jnp.where(stops_R, first_stop_R + 1, emit_R), 0)
        keep_RT = j_T < emit_R[:, None]
        cols_RT = jnp.where(keep_RT, t0_R[:, None] + j_T, n)  # n: dropped
        put = lambda a_BN, x_RT: a_BN.at[rows_R[:, None], cols_RT].set(x_RT, mode="drop")  # noqa: E731
        out = out.replace(tokens_BN=put(out.tokens_BN, tokens_RT),
                          logprobs_BN=put(out.logprobs_BN, lp_RT),
                          sample_logprobs_BN=put(out.sample_logprobs_BN, slp_RT),
                          lengths_B=out.lengths_B.at[rows_R].set(t0_R + emit_R),
                          stopped_B=out.stopped_B.at[rows_R].set(
                              out.stopped_B[rows_R] | (live_R & stops_R)))
        cache = new_cache.replace(lengths_B=cache.lengths_B + emit_R)
        last_R = jnp.where(live_R, jnp.take_along_axis(
            tokens_RT, jnp.maximum(emit_R - 1, 0)[:, None], 1)[:, 0], last_R)

        drafted_R = jnp.where(live_R, k_R, 0)
        taken_R = jnp.minimum(accepted_R, jnp.maximum(emit_R - 1, 0))  # cut at a stop or n
        onehot_RC = jax.nn.one_hot(class_B[rows_R], 3, dtype=jnp.int32)
        i = stats.passes
        stats = stats.replace(
            passes=i + 1, row_passes=stats.row_passes + live_R.sum(),
            drafting_row_passes=stats.drafting_row_passes + (1 - skip) * live_R.sum(),
            drafted=stats.drafted + drafted_R.sum(), accepted=stats.accepted + taken_R.sum(),
            forecast=stats.forecast + forecast,
            drafted_C=stats.drafted_C + drafted_R @ onehot_RC,
            accepted_C=stats.accepted_C + taken_R @ onehot_RC,
            active_N=stats.active_N.at[i].set(active, mode="drop"),
            bucket_N=stats.bucket_N.at[i].set(size, mode="drop"),
            width_N=stats.width_N.at[i].set(jnp.asarray(spec.widths)[w], mode="drop"),
            skipped=stats.skipped + skip)
        return rows_R, cache, last_R, out, stats, budgets(rows_R, out)

    return budgets, pays, one_pass


@functools.partial(jax.jit, static_argnames=("model", "spec", "max_new_tokens", "stop_tokens",
                                             "pad_id", "group", "layout"))
def generate(model: Decoder, params, prompts_BL: jax.Array, prompt_lengths_B: jax.Array,
             uids_B: jax.Array, base_key: jax.Array, sampling: SamplingParams,
             history_PRN: jax.Array, class_P: jax.Array, *, spec: RolloutConfig,
             max_new_tokens: int, stop_tokens: tuple[int, ...] = (), pad_id: int = 0,
             group: int = 1, layout=None) -> tuple[Rollout, SpecStats]:
    """Same tokens as `decode.generate`, drafting from each group's live outputs and from
    `history_PRN` (the past outputs of each of the P = B / group prompts, -1 padded; rows of
    prompt p are `p*group .. p*group+group-1`). `class_P` is each prompt's length class.
    With a `sharding.Layout`, the KV cache is split like the rows, in every bucket."""
    _validate(prompts_BL, prompt_lengths_B, max_new_tokens)
    b, l = prompts_BL.shape
    if b % group:
        raise ValueError(f"batch {b} is not a multiple of group {group}")
    n, g, kmax = max_new_tokens, group, spec.max_draft
    stop_S = jnp.asarray(stop_tokens or (-1,), jnp.int32)
    apply = functools.partial(model.apply, {"params": for_forwards(model, params)})
    group_B = jnp.arange(b, dtype=jnp.int32) // g
    class_B = class_P[group_B]
    prompts_PL, plen_P = prompts_BL[::g], prompt_lengths_B[::g]

    constrain = (lambda c: c) if layout is None else (  # noqa: E731
        lambda c: kv_cache.constrain(c, layout))
    cache = constrain(kv_cache.init_cache(model.cfg, b, l + n + kmax + 1,
                                          stacked=model.scan_layers))
    logits_B1V, cache = apply(prompts_BL, cache=cache, prefill=True,
                              logits_at_BK=(prompt_lengths_B - 1)[:, None])
    cache = cache.replace(lengths_B=prompt_lengths_B.astype(jnp.int32))
    first = sample(logits_B1V[:, 0], sampling, base_key, uids_B, jnp.zeros((b,), jnp.int32))
    stopped_B = jnp.isin(first.tokens_B, stop_S)
    out = _Out(tokens_BN=jnp.full((b, n), pad_id, jnp.int32).at[:, 0].set(first.tokens_B),
               logprobs_BN=jnp.zeros((b, n), jnp.float32).at[:, 0].set(first.logprobs_B),
               sample_logprobs_BN=jnp.zeros((b, n), jnp.float32).at[:, 0].set(
                   first.sample_logprobs_B),
               lengths_B=jnp.ones((b,), jnp.int32), stopped_B=stopped_B)
    stats = _fresh_stats(class_B, n)

    budgets, pays, one_pass = _passes(
        apply, spec, batch=b, max_new_tokens=n, stop_S=stop_S, pad_id=pad_id,
        class_B=class_B, uids_B=uids_B, base_key=base_key, sampling=sampling,
        prompts_PL=prompts_PL, plen_P=plen_P, history_PRN=history_PRN, layout=layout)

    sizes = _bucket_sizes(b, spec)
    rows_R = jnp.arange(b, dtype=jnp.int32)
    carry = (rows_R, cache, first.tokens_B, out, stats, budgets(rows_R, out))
    for level, size in enumerate(sizes):
        if level:  # live rows first (stable), then as many finished ones as fill the bucket
            rows_R, cache, last_R, out, stats, (live_R, _, _) = carry
            order_R = jnp.argsort(~live_R, stable=True)[:size]
            rows_R = rows_R[order_R]
            carry = (rows_R, constrain(cache.take_rows(order_R)),
                     last_R[order_R], out, stats, budgets(rows_R, out))
        fits_next = sizes[level + 1] if level + 1 < len(sizes) else 0

        def cond(carry, fits_next=fits_next):
            live_R, stats = carry[5][0], carry[4]
            return (jnp.sum(live_R.astype(jnp.int32)) > fits_next) & (stats.passes < n)

        budget = policy.largest_budget(spec.class_budgets, kmax, spec.length_aware, b)
        if policy.drafting_can_pay(spec.widths, size, budget, spec.cost_base,
                                   spec.cost_per_token, _draft_cost(spec, size)):
            # Drafting passes while they are expected to pay: the test sits in the loop's
            # own predicate, which the host reads after every pass anyway, so it costs no
            # branch (a `lax.cond` per pass cost a second device-to-host sync on a GPU).
            carry = jax.lax.while_loop(
                lambda c, size=size, cond=cond: cond(c) & pays(c, size),
                functools.partial(one_pass, size=size, drafting=True), carry)
        # Then (or, where not even perfect drafts pay, from the start: widths=(0,) included,
        # compacted plain decoding) plain passes until the rows fit the next bucket.
        carry = jax.lax.while_loop(cond, functools.partial(one_pass, size=size, drafting=False),
                                   carry)
    out, stats = carry[3:5]
    return Rollout(out.tokens_BN, out.lengths_B, out.logprobs_BN, out.sample_logprobs_BN,
                   out.stopped_B), stats
