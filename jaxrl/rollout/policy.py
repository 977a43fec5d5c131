"""The length-aware draft budget policy of DAS, and the verification-width cost model.

Rollout time is set by the longest generations, so drafts are spent where the tail is:
prompts whose past rollouts were long get the biggest budget, and every budget grows as
rows finish, since a decode step over few rows is memory-bound and verifying more tokens
per row costs almost nothing there. Each pass then picks one verification width among a
few compiled ones by expected tokens per second under `t = c_base + c_tok * tokens`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxrl import sharding
from jaxrl.models.decoder import Decoder, init_params, param_axes
from jaxrl.models.kv_cache import init_cache

SHORT, MEDIUM, LONG = 0, 1, 2
CLASS_NAMES = ("short", "medium", "long")


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
    a pass with k > 0 also drafts, which costs `draft_cost` times `cost_base`."""
    return cost_base * (1.0 + (draft_cost if k else 0.0)) + cost_per_token * rows * (k + 1)


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


def predicted_acceptance(accepted: jax.Array, drafted: jax.Array, prior: int) -> jax.Array:
    """The share of the next drafts expected to be accepted: this rollout's accepted / drafted
    so far, after `prior` drafted tokens counted as accepted, so that a rollout starts by
    drafting and one unlucky pass does not stop it."""
    return (accepted + prior) / (drafted + prior)


def drafting_pays(budget_B: jax.Array, live_B: jax.Array, acceptance: jax.Array,
                  widths: tuple[int, ...], rows: int, cost_base: float, cost_per_token: float,
                  draft_cost: float) -> jax.Array:
    """Whether some width k > 0 is expected to beat plain decoding on this pass, each live row
    gaining `1 + acceptance * min(k, budget)` tokens (acceptance = accepted / drafted tokens)
    at `pass_seconds` each: False skips the drafter. True without a width 0."""
    if 0 not in widths:
        return jnp.bool_(True)
    live_f = live_B.astype(jnp.float32)
    plain = jnp.sum(live_f) / pass_seconds(0, rows, cost_base, cost_per_token, draft_cost)
    best = jnp.max(jnp.stack([
        jnp.sum(live_f * (1.0 + acceptance * jnp.minimum(k, budget_B)))
        / pass_seconds(k, rows, cost_base, cost_per_token, draft_cost) for k in widths if k]))
    return best > plain


def choose_width(probs_BD: jax.Array, live_B: jax.Array, widths: tuple[int, ...], rows: int,
                 cost_base: float, cost_per_token: float) -> jax.Array:
    """Index into `widths` (drafted tokens verified per row) that maximises expected tokens
    per second. A draft token's running probability estimates the chance that it and all
    before it are accepted, so a row expects 1 + sum of its first k probabilities."""
    cum_BD = jnp.cumsum(probs_BD, axis=1)
    expected_W = jnp.stack([
        jnp.sum(live_B * (1.0 + (cum_BD[:, k - 1] if k else 0.0))) for k in widths])
    seconds_W = jnp.asarray([cost_base + cost_per_token * rows * (k + 1) for k in widths])
    return jnp.argmax(expected_W / seconds_W).astype(jnp.int32)


def free_width(widths: tuple[int, ...], rows: int, cost_base: float, cost_per_token: float,
               slack: float = 0.1) -> int | None:
    """Index of the widest width when verifying it over `rows` rows costs within `slack` of
    verifying none, so that it is the best choice whatever the drafts (their expected
    tokens only grow with the width); None when the choice depends on the drafts. Known
    when the bucket is compiled, so such a bucket's passes skip `choose_width` and the
    data-dependent branch it feeds, which costs a device-to-host sync per pass on a GPU."""
    cost = lambda k: cost_base + cost_per_token * rows * (k + 1)  # noqa: E731
    widest = max(widths)
    return widths.index(widest) if cost(widest) <= (1 + slack) * cost(0) else None


def fit_cost_model(tokens: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    """Least-squares `(c_base, c_tok)` of `seconds = c_base + c_tok * tokens`, both >= 0."""
    a = np.stack([np.ones_like(tokens, dtype=np.float64), np.asarray(tokens, np.float64)], 1)
    (c_base, c_tok), *_ = np.linalg.lstsq(a, np.asarray(seconds, np.float64), rcond=None)
    return max(float(c_base), 0.0), max(float(c_tok), 1e-12)


def measure_cost_model(forward, rows_list: tuple[int, ...], widths: tuple[int, ...],
                       repeats: int = 5) -> tuple[float, float]:
    """Times `forward(rows, width)` (a callable that runs one verification pass over `rows`
    rows and `width + 1` tokens each and blocks until done) and fits the cost model."""
    tokens, seconds = [], []
    for rows in rows_list:
        for k in widths:
            forward(rows, k)  # compile and warm up
            t0 = time.perf_counter()
            for _ in range(repeats):
                forward(rows, k)
            seconds.append((time.perf_counter() - t0) / repeats)
            tokens.append(rows * (k + 1))
    return fit_cost_model(np.asarray(tokens), np.asarray(seconds))


def verification_timer(model: Decoder, layout: sharding.Layout, context: int = 256):
    """`forward(rows, k)`: one cached forward of `k + 1` tokens on `rows` rows over a cache of
    `context` filled slots, blocking; random weights (only the time matters)."""
    params = sharding.shard_params(init_params(model.cfg, jax.random.key(0)),
                                   param_axes(model.cfg), layout)

    @functools.partial(jax.jit, static_argnums=(1, 2))
    def step(params, rows, k):
        cache = init_cache(model.cfg, rows, context + k + 1)
        cache = cache.replace(lengths_B=jnp.full((rows,), context, jnp.int32))
        return model.apply({"params": params}, jnp.zeros((rows, k + 1), jnp.int32), cache=cache)[0]

    return lambda rows, k: jax.block_until_ready(step(params, rows, k))


def fitted_cost_model(model: Decoder, layout: sharding.Layout, batch: int,
                      widths: tuple[int, ...], path: str | None,
                      shared_dir: str = "") -> tuple[float, float]:
    """`(c_base_s, c_tok_s)` timed on this device by process 0 for all processes (every
    process must compile the same width choices) and kept at `path`, so that a resumed run
    chooses the widths the interrupted one did (the tokens would not change, but the
    speculation metrics would).

    A single-process run also keeps the fit in `shared_dir` (the compilation cache's
    directory; '' = not kept), keyed by the device, the model's shape and attention, the
    batch and the widths (delete the file to measure again), and a new run of the same key
    reads it there: the fitted numbers are constants of the rollout program, so a run that measured them anew would miss the persistent
    compilation cache for its biggest program."""
    shared = ""
    if shared_dir and jax.process_count() == 1:
        key = repr((jax.devices()[0].device_kind, model.cfg, model.attention_impl, batch,
                    tuple(widths)))
        shared = os.path.join(os.path.expanduser(shared_dir), "jaxrl_cost_models",
                              hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
    for where in (path, shared):
        if where and os.path.exists(where):
            with open(where) as f:
                fit = json.load(f)
            logging.info("verification cost model from %s", where)
            _write_fit(path, fit)
            return fit["c_base_s"], fit["c_tok_s"]
    c_base, c_tok = measure_cost_model(verification_timer(model, layout),
                                       (batch, max(batch // 8, 1)), widths)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        c_base, c_tok = (float(c) for c in multihost_utils.broadcast_one_to_all(
            np.asarray([c_base, c_tok])))
    fit = {"device": jax.devices()[0].device_kind, "c_base_s": c_base, "c_tok_s": c_tok}
    for where in (path, shared):
        _write_fit(where, fit)
    logging.info("verification cost model on %s: %.3g s + %.3g s/token",
                 jax.devices()[0].device_kind, c_base, c_tok)
    return c_base, c_tok


def _write_fit(path: str | None, fit: dict) -> None:
    """Process 0 writes `fit` to `path` unless it is there already (or `path` is empty)."""
    if path and jax.process_index() == 0 and not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(fit, f)
