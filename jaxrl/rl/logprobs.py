"""Log-probs of completions under a policy: the trainer's side of the sampler/trainer pair.

A row is its right-padded prompt followed by its completion, with the padding between them
masked out; positions count only real tokens, exactly as in decoding, so in float32 these
log-probs equal the sampler's raw log-probs. `completion_stats` can also pack the rows
(rl/packing.py) so that the forward's FLOPs go to real tokens, where `pack_if_fits` says they fit.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl.models.decoder import Decoder
from jaxrl.rl import packing as packing_lib
from jaxrl.rl.losses import token_entropy


def completion_logits(model: Decoder, params, prompts_BL: jax.Array, prompt_lengths_B: jax.Array,
                      completions_BN: jax.Array, completion_lengths_B: jax.Array) -> jax.Array:
    """float32 logits `[B, N, V]`: row b, index i is the distribution of completion token i."""
    b, l = prompts_BL.shape
    n = completions_BN.shape[1]
    tokens_BT = jnp.concatenate([prompts_BL, completions_BN], axis=1)
    valid_BT = jnp.concatenate([jnp.arange(l)[None] < prompt_lengths_B[:, None],
                                jnp.arange(n)[None] < completion_lengths_B[:, None]], axis=1)
    # Token i of the completion is predicted at the previous real token: the last prompt
    # token for i = 0, completion token i-1 otherwise.
    i_N = jnp.arange(n)
    at_BN = jnp.where(i_N[None] == 0, prompt_lengths_B[:, None] - 1, l + i_N[None] - 1)
    return model.apply({"params": params}, tokens_BT, attention_mask_BT=valid_BT,
                       logits_at_BK=at_BN)


def token_logprobs(logits_BNV: jax.Array, tokens_BN: jax.Array) -> jax.Array:
    return (jnp.take_along_axis(logits_BNV, tokens_BN[..., None], -1)[..., 0]
            - jax.nn.logsumexp(logits_BNV, axis=-1))


def completion_mask(completion_lengths_B: jax.Array, n: int) -> jax.Array:
    return (jnp.arange(n)[None] < completion_lengths_B[:, None]).astype(jnp.float32)


def completion_stats(model: Decoder, params, prompts_BL: jax.Array, prompt_lengths_B: jax.Array,
                     completions_BN: jax.Array, completion_lengths_B: jax.Array,
                     layout: packing_lib.PackLayout | None = None):
    """`(logp_BN, entropy_BN)`: each completion token's log-prob and the entropy of the
    distribution it was drawn from (float32; any value past a row's length).

    With a `layout` (`pack_if_fits` gives one) the rows are packed into its rows
    (rl/packing.py): the packed forward computes the same function per token, with its
    reductions over other slots, so it equals the unpacked one up to float rounding, not bit
    for bit. The layout must fit (`layout.fits`); a sequence without room is dropped.
    """
    if layout is None:
        logits_BNV = completion_logits(model, params, prompts_BL, prompt_lengths_B,
                                       completions_BN, completion_lengths_B)
        return token_logprobs(logits_BNV, completions_BN), token_entropy(logits_BNV)
    tokens_RT, segments_RT, positions_RT = packing_lib.pack_tokens(
        layout, prompts_BL, prompt_lengths_B, completions_BN, completion_lengths_B)
    logits_RTV = model.apply({"params": params}, tokens_RT, positions_BT=positions_RT,
                             segment_ids_BT=segments_RT)
    next_RT = jnp.roll(tokens_RT, -1, axis=1)  # the token each slot predicts
    n = completions_BN.shape[1]
    return tuple(packing_lib.unpack(layout, x_RT, prompt_lengths_B, n) for x_RT in
                 (token_logprobs(logits_RTV, next_RT), token_entropy(logits_RTV)))


def pack_if_fits(fn, packing: str, pack_rows_frac: float, prompts_BL: jax.Array,
                 prompt_lengths_B: jax.Array, completions_BN: jax.Array,
                 completion_lengths_B: jax.Array):
    """`(fn(layout), packed)`: `fn` of the layout that packs the B rows into
    `ceil(B * pack_rows_frac)` rows of the same length when they fit (`packed` True), of
    None (unpacked) when they do not or `packing="none"`; `packed` is a bool scalar.

    The choice is one `lax.cond` around the whole of `fn`, so a gradient taken inside `fn`
    stays inside its branch: a cond inside the gradient would carry both branches'
    residuals out of it (the 0.5B update's profile: 3800 copies, 14% of its time).
    """
    if packing == "none":
        return fn(None), jnp.asarray(False)
    if packing not in packing_lib.PACKINGS:
        raise ValueError(f"packing={packing!r}; valid: {packing_lib.PACKINGS}")
    (b, l), n = prompts_BL.shape, completions_BN.shape[1]
    layout = packing_lib.pack_layout(prompt_lengths_B + completion_lengths_B,
                                     rows=packing_lib.packed_rows(b, pack_rows_frac),
                                     row_len=l + n)
    return jax.lax.cond(layout.fits, fn, lambda _: fn(None), layout), layout.fits
