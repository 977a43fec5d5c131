"""The DAS drafter: draft tokens from rollout history by longest suffix match (on device).

The corpus of a prompt is its own prompt, the live outputs of the rows of its group, and
its rollouts from the last `window` times it was drawn (`History`). Each output in the
corpus is preceded by the last `max_match` prompt tokens, so a context that ends in the
prompt already matches the start of earlier outputs. Sequences are laid end to end with
-1 separators (`corpus_PX`); contexts pad with -2, so neither ever matches a token.

A draft follows the SuffixDecoding / DAS chain rule (`draft`): find the longest suffix of
the row's context (at most `max_match` tokens) that occurs in the corpus with a token after
it, then repeatedly take the most frequent continuation (ties to the smaller id), its
probability the running product of continuation frequencies, until that falls below
`min_token_prob` or the draft reaches `min(budget, max_draft, spec_factor * match_length)`.
Counting is a brute-force scan over the corpus, O(X * max_match) per row, with static
shapes and no host round trip: a suffix tree's counts without the pointer structure.
`tests/rollout/suffix_tree_ref.py` is the plain-Python suffix tree it is checked against.

Counting keeps the first `max_candidates` occurrences of the matched pattern (in corpus
order: prompt, live group outputs, then history newest first); only short patterns with
more occurrences than that differ from the suffix tree, and those drafts are short anyway
(`spec_factor * match_length`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

SEP, NO_TOKEN = -1, -2  # corpus separator / padding; context padding


@struct.dataclass
class Draft:
    tokens_BD: jax.Array  # int32; -1 past num_B
    num_B: jax.Array  # int32 drafted tokens per row
    probs_BD: jax.Array  # float32 running probabilities; 0 past num_B
    match_B: jax.Array  # int32 length of the matched suffix (0 = no match)


def match_lengths(context_BM: jax.Array, corpus_BX: jax.Array) -> jax.Array:
    """ml_BX[b, c]: the longest common suffix of the context and `corpus[:c]` (<= M)."""
    m = context_BM.shape[1]
    run_BX = jnp.ones(corpus_BX.shape, bool)
    ml_BX = jnp.zeros(corpus_BX.shape, jnp.int32)
    for j in range(1, m + 1):
        before_BX = jnp.pad(corpus_BX, ((0, 0), (j, 0)), constant_values=SEP)[:, :-j]
        run_BX = run_BX & (before_BX == context_BM[:, m - j, None])
        ml_BX = ml_BX + run_BX
    return ml_BX


def first_positions(mask_BX: jax.Array, q: int) -> jax.Array:
    """The first `q` positions where `mask_BX` holds, in order; -1 where fewer. By rank
    (a running count, one scan on a GPU) and a scatter: a top-k over a corpus row would sort
    it, which cost more than the rest of the draft (bench/das_pass.py)."""
    b, x = mask_BX.shape
    rank_BX = jnp.cumsum(mask_BX.astype(jnp.int32), axis=1)
    slot_BX = jnp.where(mask_BX & (rank_BX <= q), rank_BX - 1, q)  # slot q: dropped
    return jnp.full((b, q), -1, jnp.int32).at[jnp.arange(b)[:, None], slot_BX].set(
        jnp.broadcast_to(jnp.arange(x, dtype=jnp.int32), (b, x)), mode="drop")


@functools.partial(jax.jit, static_argnames=("max_draft", "spec_factor", "min_token_prob",
                                             "max_candidates"))
def draft(context_BM: jax.Array, corpus_PX: jax.Array, group_B: jax.Array, budget_B: jax.Array,
          *, max_draft: int, spec_factor: float, min_token_prob: float,
          max_candidates: int) -> Draft:
    """Drafts up to `max_draft` tokens per row from corpus `group_B[b]` (module docstring).

    `context_BM` holds each row's last M = max_match context tokens, right-aligned, -2 before
    a shorter context. Each candidate occurrence's next `max_draft` corpus tokens are read
    once, and the walk over them is computed in one piece (`_greedy_path`), since a decode
    pass cannot afford many small kernels."""
    corpus_BX = corpus_PX[group_B]
    b, x = corpus_BX.shape
    ml_BX = match_lengths(context_BM, corpus_BX)
    has_next_BX = corpus_BX >= 0
    match_B = jnp.max(jnp.where(has_next_BX, ml_BX, 0), axis=1)
    candidates_BX = has_next_BX & (ml_BX == match_B[:, None]) & (match_B[:, None] > 0)
    pos_BQ = first_positions(candidates_BX, max_candidates)
    limit_B = jnp.minimum(jnp.minimum(budget_B, max_draft),
                          jnp.floor(spec_factor * match_B).astype(jnp.int32))
    # cont_BQD[b, q, j]: the j-th token after occurrence q (-1 past the corpus end).
    idx_BQD = pos_BQ[:, :, None] + jnp.arange(max_draft)
    cont_BQD = jnp.take_along_axis(corpus_BX, jnp.clip(idx_BQD, 0, x - 1).reshape(b, -1),
                                   1).reshape(idx_BQD.shape)
    cont_BQD = jnp.where((pos_BQ[:, :, None] >= 0) & (idx_BQD < x), cont_BQD, SEP)
    tokens_BD, count_BD, total_BD = _greedy_path(cont_BQD)
    prob_B = jnp.ones((b,), jnp.float32)
    live_B = jnp.ones((b,), bool)
    live, probs = [], []
    for j in range(max_draft):  # elementwise on [B]: one fused kernel
        prob_B = prob_B * count_BD[:, j] / jnp.maximum(total_BD[:, j], 1)
        live_B = live_B & (total_BD[:, j] > 0) & (prob_B >= min_token_prob) & (j < limit_B)
        live.append(live_B)
        probs.append(jnp.where(live_B, prob_B, 0.0))
    live_BD = jnp.stack(live, 1)
    return Draft(jnp.where(live_BD, tokens_BD, SEP), jnp.sum(live_BD, 1).astype(jnp.int32),
                 jnp.stack(probs, 1), match_B)


def _greedy_path(cont_BQD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The most-frequent-continuation walk through the trie of the Q candidates'
    continuations, without walking it: (tokens_BD, count_BD, total_BD) along the path, where
    count is how many candidates share the path through depth j and total how many share it
    through depth j - 1 and continue (not a sequence end) at j.

    The walk keeps, at each depth, the child with the most candidates (ties to the smaller
    token). That is the path of the candidate whose sequence of (count, -token) pairs is
    lexicographically largest, and two candidates compare at their first differing depth,
    where both pairs are known. So the path comes from a few [B, Q, Q, D] fused ops instead
    of D rounds of small reductions, which a decode pass pays for in kernel launches."""
    d = cont_BQD.shape[2]
    ended_BQD = jnp.cumsum(cont_BQD < 0, axis=2) > 0  # nothing continues a sequence end
    cont_BQD = jnp.where(ended_BQD, SEP, cont_BQD)
    same_BQQD = cont_BQD[:, :, None, :] == cont_BQD[:, None, :, :]
    differ_BQQ = ~jnp.all(same_BQQD, axis=3)
    first_diff_BQQ = jnp.argmax(~same_BQQD, axis=3)
    # Candidates q and r agree on depths 0 .. common - 1.
    common_BQQ1 = jnp.where(differ_BQQ, first_diff_BQQ, d)[..., None]
    count_BQD = jnp.where(ended_BQD, 0, jnp.sum(jnp.arange(d) < common_BQQ1, axis=2))
    total_BQD = jnp.sum((jnp.arange(d) <= common_BQQ1) & ~ended_BQD[:, None, :, :], axis=2)
    # beats_BQQ[b, q, r]: q's (count, -token) is larger than r's where they first differ.
    at_diff = lambda x_BQD: jnp.take_along_axis(  # noqa: E731
        x_BQD[:, :, None, :], first_diff_BQQ[..., None], axis=3)[..., 0]
    count_q_BQQ, tok_q_BQQ = at_diff(count_BQD), at_diff(cont_BQD)
    count_r_BQQ = jnp.swapaxes(count_q_BQQ, 1, 2)
    tok_r_BQQ = jnp.swapaxes(tok_q_BQQ, 1, 2)
    beats_BQQ = differ_BQQ & ((count_q_BQQ > count_r_BQQ)
                              | ((count_q_BQQ == count_r_BQQ) & (tok_q_BQQ < tok_r_BQQ)))
    best_B = jnp.argmax(~jnp.any(beats_BQQ, axis=1), axis=1)  # beaten by no candidate
    pick = lambda x_BQD: jnp.take_along_axis(x_BQD, best_B[:, None, None], 1)[:, 0]  # noqa: E731
    return pick(cont_BQD), pick(count_BQD), pick(total_BQD)


# ---- The rollout history (lives in the train state) and the corpus built from it ----

@struct.dataclass
class History:
    """The rollouts of each prompt slot's last `window` appearances, newest first.

    A prompt with id `i` lives in slot `i % S`; `owner_S` says which prompt a slot holds,
    so a colliding newcomer evicts the old one instead of drafting from its rollouts."""
    tokens_SRN: jax.Array  # int32 [S, window * G, N]; -1 past each output's length / empty
    lengths_SR: jax.Array  # int32 output lengths; 0 = empty
    owner_S: jax.Array  # int32 prompt id in the slot; -1 = empty

    @property
    def group(self) -> int:
        return self.tokens_SRN.shape[1] // self.window

    window: int = struct.field(pytree_node=False, default=4)


def init_history(slots: int, window: int, group: int, max_new_tokens: int) -> History:
    if slots < 1 or window < 1:
        raise ValueError(f"history needs slots >= 1 and window >= 1, got {slots} and {window}")
    return History(tokens_SRN=jnp.full((slots, window * group, max_new_tokens), SEP, jnp.int32),
                   lengths_SR=jnp.zeros((slots, window * group), jnp.int32),
                   owner_S=jnp.full((slots,), -1, jnp.int32), window=window)


def mask_outputs(tokens_BN: jax.Array, lengths_B: jax.Array) -> jax.Array:
    """Outputs with -1 (a corpus separator) past each row's length."""
    return jnp.where(jnp.arange(tokens_BN.shape[1]) < lengths_B[:, None], tokens_BN, SEP)


def prompt_history(history: History, prompt_ids_P: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(tokens_PRN, lengths_PR) of each prompt's past rollouts; empty where the slot holds
    another prompt."""
    slot_P = prompt_ids_P % history.owner_S.shape[0]
    mine_P = history.owner_S[slot_P] == prompt_ids_P
    tokens_PRN = jnp.where(mine_P[:, None, None], history.tokens_SRN[slot_P], SEP)
    return tokens_PRN, jnp.where(mine_P[:, None], history.lengths_SR[slot_P], 0)


def update_history(history: History, prompt_ids_P: jax.Array, tokens_BN: jax.Array,
                   lengths_B: jax.Array) -> History:
    """Pushes this step's G outputs of each prompt in front of its window (the oldest
    appearance drops out). Of several prompts in the batch sharing a slot, the first wins."""
    s = history.owner_S.shape[0]
    p = prompt_ids_P.shape[0]
    g = history.group
    slot_P = prompt_ids_P % s
    earlier_PP = jnp.tril(jnp.ones((p, p), bool), -1)
    clash_P = jnp.any((slot_P[:, None] == slot_P[None, :]) & earlier_PP, axis=1)
    old_PRN, old_len_PR = prompt_history(history, prompt_ids_P)
    n = history.tokens_SRN.shape[2]
    new_PGN = mask_outputs(tokens_BN[:, :n], lengths_B).reshape(p, g, n)
    tokens_PRN = jnp.concatenate([new_PGN, old_PRN[:, :-g]], axis=1)
    lengths_PR = jnp.concatenate([lengths_B.reshape(p, g), old_len_PR[:, :-g]], axis=1)
    write_P = jnp.where(clash_P, s, slot_P)  # out of range: dropped
    return history.replace(
        tokens_SRN=history.tokens_SRN.at[write_P].set(tokens_PRN, mode="drop"),
        lengths_SR=history.lengths_SR.at[write_P].set(lengths_PR, mode="drop"),
        owner_S=history.owner_S.at[write_P].set(prompt_ids_P, mode="drop"))


def _prompt_tail(prompts_PL: jax.Array, prompt_lengths_P: jax.Array, m: int,
                 fill: int) -> jax.Array:
    """The last `m` prompt tokens, right-aligned, `fill` before a shorter prompt."""
    idx_PM = prompt_lengths_P[:, None] - m + jnp.arange(m)
    tail = jnp.take_along_axis(prompts_PL, jnp.maximum(idx_PM, 0), 1)
    return jnp.where(idx_PM >= 0, tail, fill)


def build_corpus(prompts_PL: jax.Array, prompt_lengths_P: jax.Array, live_PGN: jax.Array,
                 history_PRN: jax.Array, max_match: int) -> jax.Array:
    """corpus_PX: own prompt | each live output | each past output, each output preceded by
    the prompt's last `max_match` tokens and every sequence followed by a separator.
    `live_PGN` and `history_PRN` are -1 past each output's length."""
    p, l = prompts_PL.shape
    prompt_P1L = jnp.where(jnp.arange(l) < prompt_lengths_P[:, None], prompts_PL, SEP)
    tail_PM = _prompt_tail(prompts_PL, prompt_lengths_P, max_match, SEP)
    outputs_PRN = jnp.concatenate([live_PGN, history_PRN], axis=1)
    r = outputs_PRN.shape[1]
    seqs_PRY = jnp.concatenate([jnp.broadcast_to(tail_PM[:, None], (p, r, max_match)),
                                outputs_PRN, jnp.full((p, r, 1), SEP, jnp.int32)], axis=2)
    return jnp.concatenate([prompt_P1L, jnp.full((p, 1), SEP, jnp.int32),
                            seqs_PRY.reshape(p, -1)], axis=1)


def contexts(prompts_BL: jax.Array, prompt_lengths_B: jax.Array, outputs_BN: jax.Array,
             output_lengths_B: jax.Array, m: int) -> jax.Array:
    """context_BM: the last `m` tokens of prompt + output so far, right-aligned, -2 before."""
    l = prompts_BL.shape[1]
    idx_BM = prompt_lengths_B[:, None] + output_lengths_B[:, None] - m + jnp.arange(m)
    from_prompt = jnp.take_along_axis(prompts_BL, jnp.clip(idx_BM, 0, l - 1), 1)
    out_idx_BM = idx_BM - prompt_lengths_B[:, None]
    from_output = jnp.take_along_axis(outputs_BN, jnp.clip(out_idx_BM, 0, outputs_BN.shape[1] - 1), 1)
    ctx_BM = jnp.where(out_idx_BM >= 0, from_output, from_prompt)
    return jnp.where(idx_BM >= 0, ctx_BM, NO_TOKEN)


def pass_drafts(spec, prompts_PL: jax.Array, prompt_lengths_P: jax.Array,
                outputs_BN: jax.Array, lengths_B: jax.Array, history_PRN: jax.Array,
                rows_R: jax.Array, budget_R: jax.Array, layout=None) -> Draft:
    """One decode pass's drafts for the rows `rows_R` of a batch (rows `p*G .. p*G+G-1` are
    prompt p's group): each row's context against its prompt's corpus (the prompt, the live
    outputs of the whole group, `history_PRN`). `spec` holds the drafter's settings (a
    `das.RolloutConfig`); `outputs_BN` and `lengths_B` are every row's tokens so far. With a
    `sharding.Layout`, each prompt's corpus is placed beside its rows."""
    p, n = prompts_PL.shape[0], outputs_BN.shape[1]
    group_R = rows_R // (outputs_BN.shape[0] // p)
    ctx_RM = contexts(prompts_PL[group_R], prompt_lengths_P[group_R], outputs_BN[rows_R],
                      lengths_B[rows_R], spec.max_match)
    live_PGN = mask_outputs(outputs_BN, lengths_B).reshape(p, -1, n)
    corpus_PX = build_corpus(prompts_PL, prompt_lengths_P, live_PGN, history_PRN,
                             spec.max_match)
    if layout is not None:
        corpus_PX = layout.rows(corpus_PX)
    return draft(ctx_RM, corpus_PX, group_R, budget_R, max_draft=spec.max_draft,
                 spec_factor=spec.spec_factor, min_token_prob=spec.min_token_prob,
                 max_candidates=spec.max_candidates)
