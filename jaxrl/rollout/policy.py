"""The length-aware draft budget policy of DAS, and the verification-width cost model.

Rollout time is set by the longest generations, so drafts are spent where the tail is:
prompts whose past rollouts were long get the biggest budget, and every budget grows as
rows finish, since a decode step over few rows is memory-bound and verifying more tokens
per row costs almost nothing there. Each pass then picks one verification width among a
few compiled ones by expected tokens per second under `t = c_base + c_tok * tokens`, plus
`draft_cost + draft_cost_per_row * rows` for a pass that drafts. All four are timed on the
device at the start of a run (`fitted_cost_model`), inside a jitted loop as the rollout's
`while_loop` runs its passes: the whole verification pass, forward and sampling
(`speculative.verification_timer`), and a whole drafting pass of the loop against a plain
one (`speculative.drafting_loops`); their loops compile at once, then run one at a time
(`timed_loop`, `loops_seconds`).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxrl import sharding
from jaxrl.models.decoder import Decoder

SHORT, MEDIUM, LONG = 0, 1, 2
CLASS_NAMES = ("short", "medium", "long")
FIXED_POINT = 1 << 12  # units per 1 of `fixed_sum`


def fixed_sum(x_B: jax.Array) -> jax.Array:
    """The sum of `x_B` (>= 0; the sum below 2^31 / FIXED_POINT) to 1 / FIXED_POINT, added in
    integers, so its bits do not depend on the order of the additions. Every sum over rows
    that decides a branch of the decode loop is one: rows are split over a mesh, a float
    sum's bits depend on how its partial sums meet, and two devices that took different
    branches would wait for each other's collectives until XLA aborts."""
    return (jnp.sum(jnp.round(x_B * FIXED_POINT).astype(jnp.int32)).astype(jnp.float32)
            / FIXED_POINT)


def length_classes(lengths_PR: jax.Array, long_frac: float, medium_frac: float) -> jax.Array:
    """Class of each prompt by the rank of its mean past rollout length among the prompts
    that have history: the top `long_frac` are LONG, the next `medium_frac` MEDIUM, the
    rest SHORT. A prompt without history is MEDIUM. `lengths_PR` is 0 where empty."""
    p = lengths_PR.shape[0]
    count_P = jnp.sum(lengths_PR > 0, axis=1)
    has_P = count_P > 0
    mean_P = jnp.where(has_P, lengths_PR.sum(1) / jnp.maximum(count_P, 1), -1.0)
    # Rank 0 = longest; ties go to the earlier prompt, so ranks are a permutation.
    earlier_PP = jnp.arange(p)[None, :] < jnp.arange(p)[:, None]
    longer_PP = (mean_P[None, :] > mean_P[:, None]) | ((mean_P[None, :] == mean_P[:, None])
                                                       & earlier_PP)
    rank_P = jnp.sum(longer_PP & has_P[None, :], axis=1)
    frac_P = rank_P / jnp.maximum(has_P.sum(), 1)
    cls_P = jnp.where(frac_P < long_frac, LONG,
                      jnp.where(frac_P < long_frac + medium_frac, MEDIUM, SHORT))
    return jnp.where(has_P, cls_P, MEDIUM).astype(jnp.int32)


def tail_boost(active: jax.Array, batch: int) -> jax.Array:
    """The largest power of two <= batch / active (1 while at least half the rows run)."""
    ratio = batch / jnp.maximum(active, 1)
    return jnp.exp2(jnp.floor(jnp.log2(jnp.maximum(ratio, 1.0)))).astype(jnp.int32)


def draft_budgets(class_B: jax.Array, active: jax.Array, batch: int,
                  class_budgets: tuple[int, int, int], max_draft: int,
                  length_aware: bool) -> jax.Array:
    """Per-row draft budget: the class budget times the tail boost, at most `max_draft`.
    Without length awareness every row gets the medium budget, never boosted."""
    if not length_aware:
        return jnp.full(class_B.shape, min(class_budgets[MEDIUM], max_draft), jnp.int32)
    base_B = jnp.asarray(class_budgets, jnp.int32)[class_B]
    return jnp.minimum(base_B * tail_boost(active, batch), max_draft)


def largest_budget(class_budgets: tuple[int, int, int], max_draft: int, length_aware: bool,
                   batch: int) -> int:
    """The most tokens `draft_budgets` can give a row of a batch of `batch` rows."""
    top = max(class_budgets) * batch if length_aware else class_budgets[MEDIUM]
    return min(top, max_draft)


def pass_seconds(k: int, rows: int, cost_base: float, cost_per_token: float,
                 draft_cost: float) -> float:
    """The cost model's seconds for a pass over `rows` rows verifying `k` drafted tokens each;
    a pass with k > 0 also drafts, which costs `draft_cost` (in `cost_base`'s units)."""
    return cost_base + (draft_cost if k else 0.0) + cost_per_token * rows * (k + 1)


def drafting_can_pay(widths: tuple[int, ...], rows: int, budget: int, cost_base: float,
                     cost_per_token: float, draft_cost: float) -> bool:
    """Whether any width > 0 beats plain decoding (width 0) over `rows` rows if every row is
    live and drafts `budget` tokens that are all accepted: the best case. Known when a bucket
    is compiled; False leaves the drafter out of its program. True without a width 0."""
    if 0 not in widths:
        return True
    plain = 1.0 / pass_seconds(0, rows, cost_base, cost_per_token, draft_cost)
    return any((1.0 + min(k, budget)) / pass_seconds(k, rows, cost_base, cost_per_token,
                                                     draft_cost) > plain
               for k in widths if k)


def predicted_gain(accepted: jax.Array, drafting_row_passes: jax.Array,
                   prior: int) -> jax.Array:
    """Accepted draft tokens a live row is expected to gain on the next drafting pass: this
    rollout's accepted tokens over the live rows of its drafting passes so far, after one
    row-pass that gained `prior`, so that a rollout starts by drafting and the estimate
    follows the record within a pass. It measures what a pass gains, draft lengths
    included: the drafter often drafts fewer tokens than the budget (no match, or a
    continuation below `min_token_prob`), where acceptance times the budget overstates it."""
    return (accepted + prior) / (drafting_row_passes + 1)


def expected_width(width_sum: jax.Array, drafting_passes: jax.Array, prior: int) -> jax.Array:
    """The verification width the next drafting pass is expected to take: the mean width of
    this rollout's drafting passes so far, after one pass at `prior` (the widest)."""
    return (width_sum + prior) / (drafting_passes + 1)


def drafting_pays(budget_B: jax.Array, live_B: jax.Array, gain: jax.Array, width: jax.Array,
                  rows: int, cost_base: float, cost_per_token: float,
                  draft_cost: float) -> jax.Array:
    """Whether a drafting pass is expected to beat plain decoding on this bucket of `rows`
    rows: each live row gaining `1 + gain` tokens (`predicted_gain`, at most the live rows'
    mean budget) at the cost of verifying `width` drafted tokens (`expected_width`) and of
    drafting, against one token per row at a plain pass's cost: False skips the drafter."""
    live_B = live_B.astype(jnp.int32)
    n_live = jnp.sum(live_B)  # integer sums: the same on every device (`fixed_sum`)
    mean_budget = jnp.sum(live_B * budget_B) / jnp.maximum(n_live, 1)
    plain = pass_seconds(0, rows, cost_base, cost_per_token, draft_cost)
    spec = cost_base + draft_cost + cost_per_token * rows * (width + 1)
    return (n_live > 0) & ((1 + jnp.minimum(gain, mean_budget)) * plain > spec)


def calibration(accepted: jax.Array, forecast: jax.Array, prior: int) -> jax.Array:
    """This rollout's accepted draft tokens over the drafter's own forecast of them (the sum
    of the verified tokens' running probabilities), after `prior` tokens forecast and
    accepted, at most 1. The running probabilities are continuation frequencies in a small
    corpus, so they can run high (a continuation seen once has probability 1): on an H200,
    sort, DAS accepted 0.10 of its drafts (REPRODUCE.md; the forecast was not recorded)."""
    return jnp.minimum((accepted + prior) / (forecast + prior), 1.0)


def choose_width(probs_BD: jax.Array, live_B: jax.Array, widths: tuple[int, ...], rows: int,
                 cost_base: float, cost_per_token: float,
                 calibration: jax.Array | float = 1.0) -> jax.Array:
    """Index into `widths` (drafted tokens verified per row) that maximises expected tokens
    per second. A draft token's running probability, times `calibration`, estimates the
    chance that it and all before it are accepted, so a row expects 1 + calibration * the
    sum of its first k probabilities."""
    cum_BD = jnp.where(live_B[:, None], jnp.cumsum(probs_BD, axis=1), 0.0)
    n_live = jnp.sum(live_B.astype(jnp.int32))
    expected_W = jnp.stack([
        n_live + (calibration * fixed_sum(cum_BD[:, k - 1]) if k else 0.0) for k in widths])
    # The drafts are made: each width costs its verification only.
    seconds_W = jnp.asarray([pass_seconds(k, rows, cost_base, cost_per_token, 0.0)
                             for k in widths])
    return jnp.argmax(expected_W / seconds_W).astype(jnp.int32)


def free_width(widths: tuple[int, ...], rows: int, cost_base: float, cost_per_token: float,
               draft_cost: float, slack: float = 0.1) -> int | None:
    """Index of the widest width when drafting and verifying it over `rows` rows costs within
    `slack` of a plain pass, so that it is the best choice whatever the drafts (their
    expected tokens only grow with the width); None when the choice depends on the drafts.
    Known when the bucket is compiled, so such a bucket's passes skip `choose_width` and the
    data-dependent branch it feeds, which costs a device-to-host sync per pass on a GPU."""
    cost = lambda k: pass_seconds(k, rows, cost_base, cost_per_token, draft_cost)  # noqa: E731
    widest = max(widths)
    return widths.index(widest) if cost(widest) <= (1 + slack) * cost(0) else None


def fit_cost_model(tokens: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    """Least-squares `(c_base, c_tok)` of `seconds = c_base + c_tok * tokens`, both >= 0."""
    a = np.stack([np.ones_like(tokens, dtype=np.float64), np.asarray(tokens, np.float64)], 1)
    (c_base, c_tok), *_ = np.linalg.lstsq(a, np.asarray(seconds, np.float64), rcond=None)
    return max(float(c_base), 0.0), max(float(c_tok), 1e-12)


# The backend compiles of the timed loops: XLA releases the GIL while it compiles, so loops
# made one after another compile at once (the start of a cold run waits for the slowest).
_COMPILES = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="jaxrl-timed-loop")


@dataclasses.dataclass(frozen=True)
class TimedLoop:
    """A jitted fori_loop of `iters` passes, compiling on a pool thread (`timed_loop`)."""

    program: concurrent.futures.Future  # of the compiled loop
    operands: tuple
    iters: int


def timed_loop(body, init, *args, iters: int = 16) -> TimedLoop:
    """`body(i, carry, *args)` in a jitted fori_loop, as the rollout's `while_loop` runs its
    passes: each pass's kernels queue behind the last, not one dispatched call's latency
    (4-6x more for the `small` policy on an H200: REPRODUCE.md). `args` are inputs, not
    constants baked into the program (weights). Traced and lowered here; the compile starts
    on a pool thread at once, so make every loop before timing any (`loops_seconds`)."""
    run = jax.jit(lambda c, *a: jax.lax.fori_loop(0, iters, lambda i, x: body(i, x, *a), c))
    return TimedLoop(_COMPILES.submit(run.lower(init, *args).compile), (init, *args), iters)


def loops_seconds(loops) -> list[float]:
    """Seconds per pass of each `TimedLoop`, in order: the best of 3 runs after a warm-up,
    one loop at a time and only once every compile has finished (the autotuner of a compile
    still running would share the device with the loop being timed)."""
    programs = [loop.program.result() for loop in loops]
    seconds = []
    for run, loop in zip(programs, loops):
        jax.block_until_ready(run(*loop.operands))
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(run(*loop.operands))
            best = min(best, time.perf_counter() - t0)
        seconds.append(best / loop.iters)
    return seconds


def fitted_cost_model(model: Decoder, layout: sharding.Layout, batch: int,
                      widths: tuple[int, ...], verify_impl: str, path: str | None,
                      shared_dir: str = "", drafting: tuple = ()
                      ) -> tuple[float, float, tuple[float, float] | None]:
    """`(c_base_s, c_tok_s, draft)` timed on this device by process 0 for all processes
    (every process must compile the same width choices) and kept at `path`, so that a
    resumed run chooses the widths the interrupted one did (the tokens would not change, but
    the speculation metrics would). `draft`, `speculative.drafting_line`'s `(draft_s,
    draft_per_row_s)` at this batch, is timed when `drafting` gives its (spec, group,
    prompt_len, max_new_tokens), else None (`speculative.measure_cost_model` times them).

    A single-process run also keeps the fit in `shared_dir` (the compilation cache's
    directory; '' = not kept), keyed by the device, the model's shape and attention, the
    batch, the widths and the drafting shapes (delete the file to measure again), and a new
    run of the same key reads it there: the fitted numbers are constants of the rollout
    program, so a run that measured them anew would miss the persistent compilation cache
    for its biggest program."""
    draft_key = ()
    if drafting:
        spec, *shape = drafting
        # "whole_pass": drafting priced from whole passes of the loop (earlier fits timed
        # the drafter alone and are not read).
        draft_key = ("whole_pass", *shape, spec.window, spec.max_match, spec.max_draft,
                     spec.max_candidates, spec.spec_factor, spec.min_token_prob,
                     spec.class_budgets, spec.length_aware)
    shared = ""
    if shared_dir and jax.process_count() == 1:
        # "sampled": fits that time the whole verification pass, sampling included (earlier
        # fits timed the forward alone and are not read).
        key = repr((jax.devices()[0].device_kind, model.cfg, model.attention_impl, batch,
                    tuple(widths), verify_impl, "sampled", draft_key))
        shared = os.path.join(os.path.expanduser(shared_dir), "jaxrl_cost_models",
                              hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
    for where in (path, shared):
        if where and os.path.exists(where):
            with open(where) as f:
                fit = json.load(f)
            logging.info("verification cost model from %s", where)
            _write_fit(path, fit)
            draft = fit.get("draft_s")  # a fit written before the per-row term: none
            return fit["c_base_s"], fit["c_tok_s"], (
                None if draft is None else (draft, fit.get("draft_per_row_s", 0.0)))
    from jaxrl.rollout import speculative  # it imports this module

    c_base, c_tok, draft = speculative.measure_cost_model(model, layout, batch, widths,
                                                          verify_impl, drafting)
    draft = draft or (-1.0, -1.0)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        c_base, c_tok, *draft = (float(c) for c in multihost_utils.broadcast_one_to_all(
            np.asarray([c_base, c_tok, *draft])))
    draft_s, draft_per_row_s = draft if drafting else (None, None)
    fit = {"device": jax.devices()[0].device_kind, "c_base_s": c_base, "c_tok_s": c_tok,
           "draft_s": draft_s, "draft_per_row_s": draft_per_row_s}
    for where in (path, shared):
        _write_fit(where, fit)
    logging.info("verification cost model on %s: %.3g s + %.3g s/token, drafting %s s + "
                 "%s s/row", jax.devices()[0].device_kind, c_base, c_tok, draft_s,
                 draft_per_row_s)
    return c_base, c_tok, (draft_s, draft_per_row_s) if drafting else None


def _write_fit(path: str | None, fit: dict) -> None:
    """Process 0 writes `fit` to `path` unless it is there already (or `path` is empty)."""
    if path and jax.process_index() == 0 and not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(fit, f)
