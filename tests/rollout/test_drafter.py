"""The device DAS drafter (jaxrl/rollout/drafter.py) against an independent plain-Python
suffix tree (suffix_tree_ref.py), which is itself checked against a brute-force scan with
exact fractions.

Draft rule (SuffixDecoding chain rule): L = longest m <= M such that context[-m:] occurs in a
corpus sequence followed by one more token of that sequence; from P = context[-L:] take the most
frequent continuation (ties: smaller id), probability = its count / all continuation counts,
multiplied into a running product; stop before a token whose running product < min_token_prob,
at a pattern with no continuation, or at n_max = min(budget, max_draft, floor(spec_factor * L)).
"""
import functools
import math
from collections import Counter
from fractions import Fraction

import jax
import numpy as np
import pytest

from suffix_tree_ref import SuffixTree  # tests/rollout is on sys.path (pytest rootdir import)

drafter = pytest.importorskip("jaxrl.rollout.drafter")

X_HAND = 64  # corpus width of the hand-worked cases (one shape, so one compile per kwargs)


# ---------------------------------------------------------------------------------------------
# Packing for the device layout, and one jitted draft per set of static arguments
# ---------------------------------------------------------------------------------------------

def pack_corpora(corpora, X, rng=None):
    """[P, X] int32: each corpus's sequences end to end, each followed by >= 1 separator -1
    (1 or 2 when `rng` is given, to exercise runs of separators); -1 pads the end."""
    out = np.full((len(corpora), X), -1, np.int32)
    for p, seqs in enumerate(corpora):
        flat = []
        for seq in seqs:
            flat += list(seq) + [-1] * (1 if rng is None else int(rng.integers(1, 3)))
        assert len(flat) <= X, (len(flat), X)
        out[p, :len(flat)] = flat
    return out


def pack_contexts(contexts, M):
    """[B, M] int32: the last M tokens of each context, right-aligned; -2 before a short one."""
    out = np.full((len(contexts), M), -2, np.int32)
    for b, ctx in enumerate(contexts):
        tail = list(ctx)[-M:] if ctx else []
        if tail:
            out[b, M - len(tail):] = tail
    return out


@functools.lru_cache(maxsize=None)
def jitted_draft(max_draft, spec_factor, min_token_prob, max_candidates):
    return jax.jit(functools.partial(drafter.draft, max_draft=max_draft, spec_factor=spec_factor,
                                     min_token_prob=min_token_prob, max_candidates=max_candidates))


def device_draft(corpora, contexts, groups, budgets, *, max_match, max_draft, spec_factor,
                 min_token_prob, max_candidates, X, rng=None):
    """Runs the device drafter; checks the output contract; returns per-row (tokens, probs),
    and the per-row match lengths (None if the Draft does not report them)."""
    out = jitted_draft(max_draft, spec_factor, min_token_prob, max_candidates)(
        pack_contexts(contexts, max_match), pack_corpora(corpora, X, rng),
        np.asarray(groups, np.int32), np.asarray(budgets, np.int32))
    tokens, num, probs = (np.asarray(a) for a in (out.tokens_BD, out.num_B, out.probs_BD))
    B = len(contexts)
    assert tokens.shape == probs.shape == (B, max_draft) and num.shape == (B,)
    assert tokens.dtype == np.int32 and num.dtype == np.int32 and probs.dtype == np.float32
    assert ((0 <= num) & (num <= max_draft)).all()
    past = np.arange(max_draft)[None, :] >= num[:, None]
    assert (tokens[past] == -1).all() and (probs[past] == 0).all()
    match = getattr(out, "match_B", None)
    if match is not None:
        match = np.asarray(match).tolist()
    return [(tokens[b, :num[b]].tolist(), probs[b, :num[b]].tolist()) for b in range(B)], match


def assert_same(got, want, what=""):
    (g_tok, g_prob), (w_tok, w_prob) = got, want
    assert g_tok == w_tok, f"{what}: tokens {g_tok} != reference {w_tok}"
    np.testing.assert_allclose(g_prob, w_prob, rtol=1e-6, atol=1e-6, err_msg=what)


# ---------------------------------------------------------------------------------------------
# The reference against a brute-force scan (exact fractions, no trie)
# ---------------------------------------------------------------------------------------------

def continuations(seqs, pattern):
    """Counter of the tokens that follow each occurrence (overlaps included) of `pattern`."""
    n = len(pattern)
    return Counter(s[i + n] for s in seqs for i in range(len(s) - n)
                   if list(s[i:i + n]) == list(pattern))


def brute_match(seqs, context, max_match):
    return max((m for m in range(1, min(max_match, len(context)) + 1)
                if continuations(seqs, context[-m:])), default=0)


def brute_draft(seqs, context, budget, *, max_match, max_draft, spec_factor, min_token_prob):
    seqs = [list(s) for s in seqs]
    L = brute_match(seqs, context, max_match)
    if L == 0:
        return [], []
    pattern, tokens, probs, prob = list(context[-L:]), [], [], Fraction(1)
    while len(tokens) < min(budget, max_draft, math.floor(spec_factor * L)):
        cont = continuations(seqs, pattern)
        if not cont:
            break
        tok = min(cont, key=lambda t: (-cont[t], t))
        prob *= Fraction(cont[tok], sum(cont.values()))
        if prob < min_token_prob:
            break
        tokens.append(tok)
        probs.append(float(prob))
        pattern.append(tok)
    return tokens, probs


def test_reference_counts_match_scan():
    rng = np.random.default_rng(0)
    for _ in range(50):
        seqs = [rng.integers(0, 3, rng.integers(1, 12)).tolist() for _ in range(rng.integers(1, 5))]
        tree = SuffixTree(seqs, max_depth=6)
        for _ in range(20):
            pat = rng.integers(0, 3, rng.integers(1, 7)).tolist()
            n_scan = sum(s[i:i + len(pat)] == pat for s in seqs for i in range(len(s)))
            node = tree.find(pat)
            assert (0 if node is None else node.count) == n_scan, (seqs, pat)
            if node is not None and len(pat) < 6:
                assert {t: c.count for t, c in node.children.items()} == continuations(seqs, pat)


def test_reference_matches_brute_force():
    rng = np.random.default_rng(1)
    n_long = 0
    for _ in range(400):
        seqs = [rng.integers(0, 4, rng.integers(1, 14)).tolist() for _ in range(rng.integers(1, 5))]
        kw = dict(max_match=int(rng.integers(1, 5)), max_draft=int(rng.integers(1, 6)),
                  spec_factor=float(rng.choice([0.5, 1.0, 1.5, 3.0])),
                  min_token_prob=float(rng.choice([0.0, 0.11, 0.37, 0.73])))
        src = seqs[rng.integers(len(seqs))]
        i = int(rng.integers(len(src)))
        context = rng.integers(0, 4, rng.integers(0, 3)).tolist() + src[:i + 1][-6:]
        budget = int(rng.integers(0, 7))
        tree = SuffixTree(seqs, max_depth=kw["max_match"] + kw["max_draft"])
        want = brute_draft(seqs, context, budget, **kw)
        got = tree.draft(context, budget, **kw)
        assert_same(got, want, f"{seqs} {context} {budget} {kw}")
        assert tree.match(context, kw["max_match"])[0] == brute_match(seqs, context,
                                                                      kw["max_match"])
        n_long += len(want[0]) >= 3
    assert n_long >= 20  # the comparison covers multi-token drafts


# ---------------------------------------------------------------------------------------------
# Hand-worked cases: reference and device both equal the hand result
# ---------------------------------------------------------------------------------------------

HAND = dict(max_match=4, max_draft=4, spec_factor=4.0, min_token_prob=0.0)

HAND_CASES = {
    # L=2: [9,1,2] does not occur, [1,2] does. children([1,2]) = {3:3} -> 3, p=1;
    # children([1,2,3]) = {4:2, 5:1} -> 4, p=1*2/3; [1,2,3,4] ends its sequences: leaf, stop.
    "basic": ([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4]], [9, 1, 2], 8, HAND,
              [3, 4], [1.0, 2 / 3]),
    # The same walk cut by the budget after one token.
    "budget": ([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4]], [9, 1, 2], 1, HAND,
               [3], [1.0]),
    # Budget 0: nothing, even with a match.
    "budget_zero": ([[1, 2, 3, 4]], [1, 2], 0, HAND, [], []),
    # spec_factor 0.5, L=2: n_max = floor(0.5 * 2) = 1 -> [3] only.
    "spec_factor": ([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4]], [9, 1, 2], 8,
                    dict(HAND, spec_factor=0.5), [3], [1.0]),
    # spec_factor 1.5, L=1 ([5] matches, [0,5] not): n_max = floor(1.5) = 1, though the chain
    # 5 -> 6 -> 7 -> 8 goes on.
    "spec_factor_L1": ([[5, 6, 7, 8]], [0, 5], 8, dict(HAND, spec_factor=1.5), [6], [1.0]),
    # min_token_prob 0.7: 3 (running p=1) kept; 4 would bring it to 2/3 < 0.7: stop before it.
    "min_token_prob": ([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4]], [9, 1, 2], 8,
                       dict(HAND, min_token_prob=0.7), [3], [1.0]),
    # min_token_prob on the running product, not on each step: children([2]) = {3:4, 4:4}
    # -> 3 (tie), p=1/2; children([2,3]) = {5:3, 6:1} -> 5, p=1/2*3/4 = 3/8 < 0.4: stop
    # (though the step's own 3/4 >= 0.4).
    "min_token_prob_product": ([[2, 3, 5], [2, 3, 5], [2, 3, 5], [2, 3, 6]] + [[2, 4]] * 4,
                               [2], 8, dict(HAND, min_token_prob=0.4), [3], [0.5]),
    # Tie: children([5]) = {8:1, 3:1} -> 3 (smaller id), p=1/2; children([5,3]) = {2:1} -> 2,
    # p=1/2; [5,3,2] leaf.
    "tie": ([[5, 8, 1], [5, 3, 2]], [5], 8, HAND, [3, 2], [0.5, 0.5]),
    # Context [1,2] shorter than M=4 (device: [-2,-2,1,2]): L=2, n_max=min(8,4,floor(4*2))=4,
    # chain 3,4,5 then the end of the sequence.
    "short_context": ([[1, 2, 3, 4, 5]], [1, 2], 8, HAND, [3, 4, 5], [1.0, 1.0, 1.0]),
    # Longest match decides: L=2 ([1,2]) -> 3, p=1; with L=1, [2] would give 4 (count 2 of 3).
    "longest_match_wins": ([[1, 2, 3], [5, 2, 4], [6, 2, 4]], [1, 2], 1, HAND, [3], [1.0]),
    # No match: token 4 never occurs.
    "no_match": ([[1, 2, 3]], [4], 8, HAND, [], []),
    # [2] occurs only at the end of a sequence (next comes [3,4], after a separator): no match.
    "end_of_sequence_only": ([[1, 2], [3, 4]], [1, 2], 8, HAND, [], []),
    # [4,5,6] occurs only at the end of sequence 0: L=2 ([5,6], followed by 8 in sequence 1).
    # Probability is over continuations: count([5,6]) = 2 but children = {8:1} -> p=1, not 1/2.
    # n_max = min(8, 4, floor(4 * 2)) = 4; [5,6,8] ends its sequence: leaf.
    "end_does_not_count": ([[4, 5, 6], [7, 5, 6, 8]], [4, 5, 6], 8, HAND, [8], [1.0]),
    # Overlaps count: in [7,7,7,7], [7,7] occurs at 0,1,2 (followed by 7,7,end) and in [7,7,1]
    # at 0 (followed by 1): children([7,7]) = {7:2, 1:1} -> 7, p=2/3. children([7,7,7]) =
    # {7:1} (at 0; at 1 it ends the sequence) -> 7, p=2/3. [7,7,7,7]: leaf.
    # Without overlaps, {7:1, 1:1} would pick 1.
    "overlap": ([[7, 7, 7, 7], [7, 7, 1]], [3, 7, 7], 8, HAND, [7, 7], [2 / 3, 2 / 3]),
    # Self-overlap all the way: [7] -> {7:3}, [7,7] -> {7:2}, [7,7,7] -> {7:1}, then leaf.
    "overlap_run": ([[7, 7, 7, 7]], [7], 8, HAND, [7, 7, 7], [1.0, 1.0, 1.0]),
    # Context longer than M: only its last 4 tokens count; [0,1,2,3] matches (L=4), -> 9.
    "long_context": ([[0, 1, 2, 3, 9], [1, 2, 3, 8], [1, 2, 3, 8]], [6, 6, 0, 1, 2, 3], 8, HAND,
                     [9], [1.0]),
}


@pytest.mark.parametrize("name", list(HAND_CASES))
def test_hand_cases(name):
    seqs, context, budget, kw, want_tokens, want_probs = HAND_CASES[name]
    want = (want_tokens, want_probs)
    tree = SuffixTree(seqs, max_depth=kw["max_match"] + kw["max_draft"])
    assert_same(tree.draft(context, budget, **kw), want, f"reference, {name}")
    assert_same(brute_draft(seqs, context, budget, **kw), want, f"brute force, {name}")
    (got,), match = device_draft([seqs], [context], [0], [budget], max_candidates=X_HAND,
                                 X=X_HAND, **kw)
    assert_same(got, want, f"device, {name}")
    if match is not None:
        assert match[0] == tree.match(context, kw["max_match"])[0]


def test_hand_cases_batched():
    """All default-parameter hand cases in one call: each row reads its own corpus (group_B),
    with extra rows pointing at other rows' corpora."""
    names = [n for n, case in HAND_CASES.items() if case[3] is HAND]
    corpora = [HAND_CASES[n][0] for n in names]
    rows = [(i, i) for i in range(len(names))] + [(i, (i + 3) % len(names)) for i in
                                                  range(len(names))]
    contexts = [HAND_CASES[names[i]][1] for i, _ in rows]
    budgets = [HAND_CASES[names[i]][2] for i, _ in rows]
    groups = [g for _, g in rows]
    got, _ = device_draft(corpora, contexts, groups, budgets, max_candidates=X_HAND, X=X_HAND,
                          **HAND)
    for b, (i, g) in enumerate(rows):
        want = SuffixTree(corpora[g], 8).draft(contexts[b], budgets[b], **HAND)
        if g == i:
            assert_same(want, HAND_CASES[names[i]][4:], names[i])
        assert_same(got[b], want, f"row {b}: context of {names[i]} on corpus of {names[g]}")


# ---------------------------------------------------------------------------------------------
# Randomised agreement, batched: several rows and corpora per call
# ---------------------------------------------------------------------------------------------

def random_corpus(rng, alphabet, X):
    """Sequences mutated from a few base sequences over a small alphabet (so long repeats)."""
    bases = [rng.integers(0, alphabet, rng.integers(10, 40)).tolist()
             for _ in range(rng.integers(1, 4))]
    seqs, used = [], 0
    for _ in range(rng.integers(3, 12)):
        seq = list(bases[rng.integers(len(bases))])
        for _ in range(rng.integers(0, 4)):
            pos = int(rng.integers(len(seq)))
            op = rng.integers(3)
            if op == 0:
                seq[pos] = int(rng.integers(alphabet))
            elif op == 1:
                seq.insert(pos, int(rng.integers(alphabet)))
            elif len(seq) > 1:
                del seq[pos]
        if rng.random() < 0.3:  # cut: ends of sequences inside repeated material
            seq = seq[:rng.integers(1, len(seq) + 1)]
        if used + len(seq) + 2 > X:  # room for up to 2 separators each
            break
        seqs.append(seq)
        used += len(seq) + 2
    return seqs


def random_context(rng, corpora, p, alphabet, M):
    """A piece of a corpus sequence (usually of the row's own corpus) plus noise."""
    r = rng.random()
    if r < 0.03:
        return []
    src_corpus = corpora[p] if rng.random() < 0.85 else corpora[rng.integers(len(corpora))]
    src = src_corpus[rng.integers(len(src_corpus))]
    end = int(rng.integers(1, len(src) + 1))
    piece = src[max(0, end - int(rng.integers(max(1, M // 2), M + 4))):end]
    ctx = rng.integers(0, alphabet, rng.integers(0, 4)).tolist() + piece
    if rng.random() < 0.15:  # a mutated token somewhere in the tail
        ctx[-int(rng.integers(1, min(len(ctx), M) + 1))] = int(rng.integers(alphabet + 2))
    if rng.random() < 0.1:  # a fresh token never seen: no match
        ctx.append(alphabet + 5)
    return ctx


RANDOM_CONFIGS = [
    # (seed, alphabet, M, max_draft, spec_factor, min_token_prob)
    (10, 4, 6, 6, 1.0, 0.0),
    (11, 5, 4, 8, 2.0, 0.3372),
    (12, 3, 8, 5, 1.25, 0.0),
    (13, 6, 5, 7, 1.5, 0.4513),  # thresholds away from small-denominator fractions (float32)
]
N_ROWS, N_CORPORA, X_RANDOM = 64, 8, 256


@pytest.mark.parametrize("seed,alphabet,M,max_draft,spec_factor,min_token_prob", RANDOM_CONFIGS)
def test_random_agreement(seed, alphabet, M, max_draft, spec_factor, min_token_prob):
    rng = np.random.default_rng(seed)
    kw = dict(max_match=M, max_draft=max_draft, spec_factor=spec_factor,
              min_token_prob=min_token_prob)
    corpora = [random_corpus(rng, alphabet, X_RANDOM) for _ in range(N_CORPORA)]
    groups = rng.integers(0, N_CORPORA, N_ROWS).tolist()
    contexts = [random_context(rng, corpora, g, alphabet, M) for g in groups]
    budgets = np.where(rng.random(N_ROWS) < 0.6, max_draft + 2,
                       rng.integers(0, max_draft + 1, N_ROWS)).tolist()
    # max_candidates = X >= any pattern's occurrence count, so the device must be exact
    got, match = device_draft(corpora, contexts, groups, budgets, max_candidates=X_RANDOM,
                              X=X_RANDOM, rng=rng, **kw)
    trees = [SuffixTree(seqs, M + max_draft) for seqs in corpora]
    wants = [trees[g].draft(ctx, bud, **kw) for g, ctx, bud in zip(groups, contexts, budgets)]
    for b, (g, ctx, bud) in enumerate(zip(groups, contexts, budgets)):
        what = f"row {b}: corpus {corpora[g]} context {ctx} budget {bud}"
        assert_same(got[b], wants[b], what)
        if match is not None:
            assert match[b] == trees[g].match(ctx, M)[0], what

    # Power: long drafts, budget-bound rows, early stops and no-match rows all occur.
    nums = np.array([len(w[0]) for w in wants])
    budgets = np.array(budgets)
    assert nums.mean() > 2, nums
    assert ((nums == budgets) & (budgets > 1) & (budgets < max_draft)).sum() >= 3
    assert (nums == 0).sum() >= 2
    assert ((nums > 0) & (nums < np.minimum(budgets, max_draft))).sum() >= 3
    if min_token_prob > 0:  # the probability cut shortens some drafts
        uncut = [len(trees[g].draft(ctx, bud, **dict(kw, min_token_prob=0.0))[0])
                 for g, ctx, bud in zip(groups, contexts, budgets)]
        assert (nums < np.array(uncut)).sum() >= 3


def test_above_candidate_cap_is_a_real_continuation():
    """Above max_candidates the device counts only the first occurrences, so it may differ from
    the reference; what it drafts must still be a real continuation: the last context token
    followed by the draft occurs in a corpus sequence, within n_max tokens."""
    rng = np.random.default_rng(20)
    kw = dict(max_match=4, max_draft=6, spec_factor=2.0, min_token_prob=0.0)
    corpora = [[rng.integers(0, 2, 40).tolist() for _ in range(5)] for _ in range(2)]
    groups = [b % 2 for b in range(32)]
    contexts = [random_context(rng, corpora, g, 2, 4) for g in groups]
    budgets = [8] * 32
    got, _ = device_draft(corpora, contexts, groups, budgets, max_candidates=4, X=256, **kw)
    for b, (g, ctx) in enumerate(zip(groups, contexts)):
        tokens, probs = got[b]
        if tokens:
            path = ctx[-1:] + tokens
            assert any(s[i:i + len(path)] == path for s in corpora[g] for i in range(len(s)))
            assert all(0 < p <= 1 for p in probs) and probs == sorted(probs, reverse=True)
    assert sum(len(tokens) >= 3 for tokens, _ in got) >= 16  # (most differ from the reference)


@pytest.mark.parametrize("x,density", [(1, 1.0), (31, 0.5), (33, 0.1), (100, 0.0), (1000, 0.01),
                                       (1000, 0.3), (3000, 1.0)])
def test_first_positions_are_the_earliest_in_order(x, density):
    """The rank-and-scatter selection equals numpy's first `q` nonzero indices, -1 padded,
    with no hits, fewer than `q` and all hits."""
    rng = np.random.default_rng(x)
    mask = rng.random((6, x)) < density
    mask[0, :] = False
    for q in (1, 5, 64):
        got = np.asarray(jax.jit(drafter.first_positions, static_argnums=1)(mask, q))
        for b in range(mask.shape[0]):
            want = np.flatnonzero(mask[b])[:q]
            np.testing.assert_array_equal(got[b], np.pad(want, (0, q - len(want)),
                                                         constant_values=-1))


def test_match_lengths_by_hand():
    """ml[c] = the longest common suffix of the context and corpus[:c], at most M = 3;
    worked by hand for context (5, 6, 7) on the corpus 6 7 5 6 7 | 7 | (-1 separates; the
    context's padding -2 matches nothing)."""
    corpus = np.array([[6, 7, 5, 6, 7, -1, 7, -1]], np.int32)
    # corpus[:c] ends in: c=2 "6 7", c=5 "5 6 7", c=7 "7"; at every other c a mismatch.
    want = np.array([[0, 0, 2, 0, 0, 3, 0, 1]])
    got = drafter.match_lengths(np.array([[5, 6, 7]], np.int32), corpus)
    np.testing.assert_array_equal(np.asarray(got), want)
    padded = drafter.match_lengths(np.array([[-2, 6, 7]], np.int32), corpus)
    np.testing.assert_array_equal(np.asarray(padded), np.minimum(want, 2))
