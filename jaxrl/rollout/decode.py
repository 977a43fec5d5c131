"""Prefill + a jitted `lax.while_loop` decode over a padded batch of prompts.

Prompts are right-padded: row `b` holds `prompt_lengths_B[b]` tokens at the start of
`prompts_BL`. Completions are sampled with the position-keyed rule (`sampling.py`), the
completion position `t` counting from 0 at the first generated token, so a row's tokens do
not depend on the rest of the batch.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.models.decoder import Decoder, for_forwards
from jaxrl.models import kv_cache
from jaxrl.rollout.sampling import SamplingParams, sample


@struct.dataclass
class Rollout:
    tokens_BN: jax.Array  # int32 completion tokens; `pad_id` past each row's length
    lengths_B: jax.Array  # int32 completion lengths, the stop token included
    logprobs_BN: jax.Array  # float32 log-probs under the raw model distribution; 0 past length
    sample_logprobs_BN: jax.Array  # float32 log-probs under the sampling distribution
    finished_B: jax.Array  # bool: ended on a stop token (False: cut at max_new_tokens)


def _validate(prompts_BL, prompt_lengths_B, max_new_tokens):
    if prompts_BL.ndim != 2:
        raise ValueError(f"prompts_BL must be [batch, length], got shape {prompts_BL.shape}")
    if prompt_lengths_B.shape != prompts_BL.shape[:1]:
        raise ValueError(f"prompt_lengths_B has shape {prompt_lengths_B.shape}; "
                         f"expected ({prompts_BL.shape[0]},)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "stop_tokens", "pad_id",
                                             "layout"))
def generate(model: Decoder, params, prompts_BL: jax.Array, prompt_lengths_B: jax.Array,
             uids_B: jax.Array, base_key: jax.Array, sampling: SamplingParams, *,
             max_new_tokens: int, stop_tokens: tuple[int, ...] = (), pad_id: int = 0,
             layout=None) -> Rollout:
    """Samples up to `max_new_tokens` tokens per row; rows stop at any of `stop_tokens`.
    With a `sharding.Layout`, the KV cache is split like the rows."""
    _validate(prompts_BL, prompt_lengths_B, max_new_tokens)
    if prompts_BL.shape[0] == 1 and layout is None:
        # One row runs as two copies of itself: XLA lowers a one-row matmul to a column
        # reduction, which read the weights at about a fifth of the HBM bandwidth on an
        # H200 (bench.decode_profile), where two rows get a GEMM. The tokens are the row's own
        # (position-keyed by its uid); the copy is dropped.
        twice = lambda x: jnp.concatenate([x, x])  # noqa: E731
        out = generate(model, params, twice(prompts_BL), twice(prompt_lengths_B),
                       twice(uids_B), base_key, jax.tree.map(twice, sampling),
                       max_new_tokens=max_new_tokens, stop_tokens=stop_tokens, pad_id=pad_id)
        return jax.tree.map(lambda x: x[:1], out)
    b, l = prompts_BL.shape
    n = max_new_tokens
    stop_S = jnp.asarray(stop_tokens or (-1,), jnp.int32)
    apply = functools.partial(model.apply, {"params": for_forwards(model, params)})

    cache = kv_cache.init_cache(model.cfg, b, l + n, stacked=model.scan_layers)
    if layout is not None:
        cache = kv_cache.constrain(cache, layout)
    logits_B1V, cache = apply(prompts_BL, cache=cache, prefill=True,
                              logits_at_BK=(prompt_lengths_B - 1)[:, None])
    cache = cache.replace(lengths_B=prompt_lengths_B.astype(jnp.int32))

    def emit(state, logits_BV, i):
        tokens_BN, lp_BN, slp_BN, lengths_B, done_B = state
        s = sample(logits_BV, sampling, base_key, uids_B, jnp.full((b,), i, jnp.int32))
        live_B = ~done_B
        tok_B = jnp.where(live_B, s.tokens_B, pad_id)
        tokens_BN = tokens_BN.at[:, i].set(tok_B)
        lp_BN = lp_BN.at[:, i].set(jnp.where(live_B, s.logprobs_B, 0.0))
        slp_BN = slp_BN.at[:, i].set(jnp.where(live_B, s.sample_logprobs_B, 0.0))
        lengths_B = lengths_B + live_B
        done_B = done_B | jnp.isin(tok_B, stop_S)
        return (tokens_BN, lp_BN, slp_BN, lengths_B, done_B), tok_B

    state = (jnp.full((b, n), pad_id, jnp.int32), jnp.zeros((b, n), jnp.float32),
             jnp.zeros((b, n), jnp.float32), jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool))
    state, last_B = emit(state, logits_B1V[:, 0], 0)

    def cond(carry):
        i, _, _, state = carry
        return (i < n) & ~jnp.all(state[-1])

    def body(carry):
        i, cache, last_B, state = carry
        logits_B1V, cache = apply(last_B[:, None], cache=cache)
        state, last_B = emit(state, logits_B1V[:, 0], i)
        return i + 1, cache, last_B, state

    _, _, _, state = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, last_B, state))
    tokens_BN, lp_BN, slp_BN, lengths_B, done_B = state
    return Rollout(tokens_BN, lengths_B, lp_BN, slp_BN, done_B)
