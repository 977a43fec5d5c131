"""V1-Infer's uncertainty-guided Swiss tournament (arXiv 2603.04304), for a batch of problems.

Each problem has N candidate solutions and V judge calls. A judge call rates both solutions
of a pair from 1 to 10; the higher rating wins, equal ratings tie. Scores are
margin-weighted win rates:

    v_ij in {1, 0.5, 0} (win / tie / loss),  w_ij = max(|r_i - r_j| / 9, tau),
    mu_i = sum_j w_ij v_ij / sum_j w_ij      (0.5 before any comparison)

Phase 1 (coverage): random disjoint pairs, then rounds in which every candidate compared
fewer than `d_min` times is paired with the opponent it has not met whose mu is closest.
Phase 2 (Swiss): sort by mu and pair neighbours at most `window` ranks apart, preferring the
smallest mu gap, then the pair judged fewer times. Every round's pairs, for all problems,
go to the judge in one call, so a device-backed judge batches them; the pairing itself is
host-side numpy (control flow over [P, N] arrays, vectorized across problems).

The public V1-Infer code (github.com/HarmanDotpy/pairwise-self-verification) could not be
read from here; this follows the paper's description as stated in the issue. Where the
description leaves a choice open, the choice is named in a comment.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

PairJudge = Callable[[np.ndarray], np.ndarray]  # pairs_PR2 int (-1 = empty) -> ratings_PR2
MIN_RATING, MAX_RATING = 1.0, 10.0


@dataclasses.dataclass(frozen=True)
class TournamentResult:
    scores_PN: np.ndarray  # float64 mu
    chosen_P: np.ndarray  # int64 argmax mu, ties broken at random
    calls_P: np.ndarray  # int64 judge calls used, never above the budget
    rounds: tuple[np.ndarray, ...]  # the pairs_PR2 judged in each round (-1 = empty slot)
    ratings: tuple[np.ndarray, ...]  # the judge's ratings_PR2 for each round (NaN = empty)


@dataclasses.dataclass
class Standings:
    """Per-problem tallies the scores and the pairing rules read."""

    weight_PN: np.ndarray  # float64 sum_j w_ij
    won_PN: np.ndarray  # float64 sum_j w_ij v_ij
    met_PNN: np.ndarray  # int64 times each pair was judged (symmetric)

    @classmethod
    def empty(cls, p: int, n: int) -> "Standings":
        return cls(np.zeros((p, n)), np.zeros((p, n)), np.zeros((p, n, n), np.int64))

    @property
    def degree_PN(self) -> np.ndarray:
        return self.met_PNN.sum(-1)

    @property
    def mu_PN(self) -> np.ndarray:
        safe_PN = np.where(self.weight_PN > 0, self.weight_PN, 1.0)
        return np.where(self.weight_PN > 0, self.won_PN / safe_PN, 0.5)

    def record(self, pairs_PR2: np.ndarray, ratings_PR2: np.ndarray, tau: float) -> None:
        p_idx, r_idx = np.nonzero(pairs_PR2[..., 0] >= 0)
        a, b = pairs_PR2[p_idx, r_idx, 0], pairs_PR2[p_idx, r_idx, 1]
        ra, rb = ratings_PR2[p_idx, r_idx, 0], ratings_PR2[p_idx, r_idx, 1]
        w = np.maximum(np.abs(ra - rb) / 9.0, tau)
        va = np.where(ra > rb, 1.0, np.where(ra == rb, 0.5, 0.0))
        # np.add.at: a candidate may appear in several slots of one round (knockout repeats).
        np.add.at(self.weight_PN, (p_idx, a), w)
        np.add.at(self.weight_PN, (p_idx, b), w)
        np.add.at(self.won_PN, (p_idx, a), w * va)
        np.add.at(self.won_PN, (p_idx, b), w * (1.0 - va))
        np.add.at(self.met_PNN, (p_idx, a, b), 1)
        np.add.at(self.met_PNN, (p_idx, b, a), 1)


def argmax_random_ties(values_PN: np.ndarray, rng: np.random.Generator,
                       valid_PN: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The index of each row's maximum, ties broken uniformly at random, and how many
    entries share it (the tie count). `valid_PN` masks entries out (each row needs one)."""
    values_PN = np.asarray(values_PN, np.float64)
    if valid_PN is not None:
        values_PN = np.where(valid_PN, values_PN, -np.inf)
    top_PN = values_PN == values_PN.max(-1, keepdims=True)
    noise_PN = np.where(top_PN, rng.random(values_PN.shape), -1.0)
    return noise_PN.argmax(-1), top_PN.sum(-1)


def phase1_calls(num_candidates: int, d_min: int) -> int:
    """The fewest calls that give every candidate `d_min` comparisons: ceil(N d_min / 2)."""
    return -(-num_candidates * d_min // 2)


def check_ratings(slots: np.ndarray, ratings, what: str = "pairs_PR2") -> np.ndarray:
    """A judge's ratings as float64 with NaN in empty slots (`slots` < 0); raises on a shape
    other than `slots`' or a rating outside [1, 10] (NaN included) in a non-empty slot."""
    ratings = np.asarray(ratings, np.float64)
    if ratings.shape != slots.shape:
        raise ValueError(f"the judge returned ratings of shape {ratings.shape} for {what} of "
                         f"shape {slots.shape}; it must return that shape")
    used = ratings[slots >= 0]
    bad = used[~((used >= MIN_RATING) & (used <= MAX_RATING))]  # NaN fails both
    if bad.size:
        raise ValueError(f"the judge returned ratings {bad[:5].tolist()} for {what}; ratings "
                         f"must be in [{MIN_RATING:g}, {MAX_RATING:g}]")
    return np.where(slots >= 0, ratings, np.nan)


def _greedy_disjoint(pairs_PK2: np.ndarray, valid_PK: np.ndarray, n: int,
                     limit_P: np.ndarray) -> np.ndarray:
    """Walks each problem's pair list in order, taking a pair when both candidates are still
    free this round, up to `limit_P` pairs; vectorized across problems. -> pairs_PR2."""
    p, k, _ = pairs_PK2.shape
    rows = np.arange(p)
    free_PN = np.ones((p, n), bool)
    out_PR2 = np.full((p, n // 2, 2), -1, np.int64)
    taken_P = np.zeros(p, np.int64)
    for j in range(k):
        a, b = pairs_PK2[:, j, 0], pairs_PK2[:, j, 1]
        ok = valid_PK[:, j] & free_PN[rows, a] & free_PN[rows, b] & (taken_P < limit_P)
        (hit,) = np.nonzero(ok)
        out_PR2[hit, taken_P[hit]] = pairs_PK2[hit, j]
        free_PN[hit, a[hit]] = False
        free_PN[hit, b[hit]] = False
        taken_P += ok
    return out_PR2


def random_pairs(n: int, limit_P: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random perfect matching per problem (one candidate sits out when N is odd)."""
    perm_PN = rng.permuted(np.broadcast_to(np.arange(n), (len(limit_P), n)), axis=1)
    pairs_PR2 = perm_PN[:, : n // 2 * 2].reshape(len(limit_P), n // 2, 2).copy()
    pairs_PR2[np.arange(n // 2)[None, :] >= limit_P[:, None]] = -1
    return pairs_PR2


def coverage_pairs(st: Standings, d_min: int, limit_P: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Phase 1 after the random round: each candidate with fewer than `d_min` comparisons
    is paired with the closest-mu opponent, preferring (in this order) one it has not met,
    one that is itself short of comparisons (so coverage ends in about N d_min / 2 calls;
    our choice), then the smallest mu gap. A met opponent is the fallback for a candidate
    that has met everyone (N - 1 < d_min)."""
    p, n = st.weight_PN.shape
    i, j = np.triu_indices(n, 1)
    short_PN = st.degree_PN < d_min
    mu_PN = st.mu_PN
    met_PK = st.met_PNN[:, i, j] > 0
    both_short_PK = short_PN[:, i] & short_PN[:, j]
    gap_PK = np.abs(mu_PN[:, i] - mu_PN[:, j])
    order_PK = np.lexsort((rng.random(gap_PK.shape), gap_PK, ~both_short_PK, met_PK), axis=-1)
    pairs_PK2 = np.broadcast_to(np.stack([i, j], -1), (p, len(i), 2))
    pairs_PK2 = np.take_along_axis(pairs_PK2, order_PK[..., None], 1)
    valid_PK = np.take_along_axis(short_PN[:, i] | short_PN[:, j], order_PK, 1)
    return _greedy_disjoint(pairs_PK2, valid_PK, n, limit_P)


def swiss_pairs(st: Standings, window: int, limit_P: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """Phase 2: candidates sorted by mu (ties in random order); pairs at most `window` ranks
    apart, taken greedily by smallest mu gap, then fewest past meetings, then higher rank
    (the top of the table is where the winner is decided)."""
    p, n = st.weight_PN.shape
    mu_PN = st.mu_PN
    rank_PN = np.lexsort((rng.random((p, n)), -mu_PN), axis=-1)  # rank -> candidate
    apart_NN = np.arange(n)[None, :] - np.arange(n)[:, None]
    lo, hi = np.nonzero((apart_NN >= 1) & (apart_NN <= window))  # rank pairs, lo < hi
    a_PK, b_PK = rank_PN[:, lo], rank_PN[:, hi]
    rows = np.arange(p)[:, None]
    gap_PK = np.abs(mu_PN[rows, a_PK] - mu_PN[rows, b_PK])
    met_PK = st.met_PNN[rows, a_PK, b_PK]
    order_PK = np.lexsort((np.broadcast_to(lo, gap_PK.shape), met_PK, gap_PK), axis=-1)
    pairs_PK2 = np.take_along_axis(np.stack([a_PK, b_PK], -1), order_PK[..., None], 1)
    return _greedy_disjoint(pairs_PK2, np.ones(order_PK.shape, bool), n, limit_P)


PickPairs = Callable[[Standings, int, np.ndarray, np.random.Generator], np.ndarray]


def play(judge: PairJudge, num_problems: int, num_candidates: int, budget: int,
         rng: np.random.Generator, pick: PickPairs, tau: float) -> TournamentResult:
    """Rounds of `pick(standings, round, limit_P, rng) -> pairs_PR2` until every problem has
    spent its budget; each round is one judge call. A problem's `limit_P` is what is left of
    its budget, so `calls_P` never exceeds it; `pick` returns at least one pair wherever the
    limit is positive, so the loop ends."""
    st = Standings.empty(num_problems, num_candidates)
    calls_P = np.zeros(num_problems, np.int64)
    rounds, ratings = [], []
    while (calls_P < budget).any():
        limit_P = np.minimum(budget - calls_P, num_candidates // 2)
        pairs_PR2 = pick(st, len(rounds), limit_P, rng)
        used_P = (pairs_PR2[..., 0] >= 0).sum(-1)
        ratings_PR2 = check_ratings(pairs_PR2, judge(pairs_PR2.copy()))
        st.record(pairs_PR2, ratings_PR2, tau)
        calls_P += used_P
        rounds.append(pairs_PR2)
        ratings.append(ratings_PR2)
    mu_PN = st.mu_PN
    chosen_P, _ = argmax_random_ties(mu_PN, rng)
    return TournamentResult(mu_PN, chosen_P, calls_P, tuple(rounds), tuple(ratings))


def validate(num_problems: int, num_candidates: int, budget: int, tau: float) -> None:
    if num_problems < 1:
        raise ValueError(f"num_problems={num_problems}; need at least 1")
    if num_candidates < 2:
        raise ValueError(f"num_candidates={num_candidates}; pairwise judging needs N >= 2")
    if budget < 1:
        raise ValueError(f"budget={budget}; need at least 1 judge call per problem")
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau={tau}; the weight floor must be in (0, 1]")


def swiss(judge: PairJudge, num_problems: int, num_candidates: int, budget: int, seed: int, *,
          d_min: int = 2, window: int = 8, tau: float = 0.1) -> TournamentResult:
    """V1-Infer for `num_problems` problems of `num_candidates` candidates each, spending
    `budget` judge calls per problem. `judge(pairs_PR2)` gets int candidate indices
    `[P, N // 2, 2]` (-1 = empty slot) and returns ratings `[P, N // 2, 2]` in [1, 10]."""
    validate(num_problems, num_candidates, budget, tau)
    if d_min < 1:
        raise ValueError(f"d_min={d_min}; need at least 1 comparison per candidate")
    if window < 1:
        raise ValueError(f"window={window}; need at least 1 (neighbours one rank apart)")
    need = phase1_calls(num_candidates, d_min)
    if budget < need:
        raise ValueError(f"budget={budget} is below what phase 1 needs: {need} calls "
                         f"(ceil(N d_min / 2) with N={num_candidates}, d_min={d_min})")

    def pick(st: Standings, r: int, limit_P: np.ndarray, rng: np.random.Generator):
        if r == 0:
            return random_pairs(num_candidates, limit_P, rng)
        covering_P = (st.degree_PN < d_min).any(-1)
        return np.where(covering_P[:, None, None], coverage_pairs(st, d_min, limit_P, rng),
                        swiss_pairs(st, window, limit_P, rng))

    return play(judge, num_problems, num_candidates, budget, np.random.default_rng(seed), pick,
                tau)
