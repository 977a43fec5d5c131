"""The baselines V1-Infer is measured against, each at a stated judge budget.

Every method returns a `Choice`: the chosen candidate per problem and the judge calls it
used. Pairwise methods take the tournament's judge (`pairs_PR2 -> ratings_PR2`); pointwise
ones take `judge(cands_PR) -> ratings_PR`, candidate indices with -1 for an empty slot.
Answer-based methods take canonical answers `answers_PN` (any hashable; None = no answer).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from jaxrl.verify import tournament
from jaxrl.verify.tournament import PairJudge, argmax_random_ties

PointJudge = Callable[[np.ndarray], np.ndarray]  # cands_PR int (-1 = empty) -> ratings_PR


@dataclasses.dataclass(frozen=True)
class Choice:
    chosen_P: np.ndarray  # int64
    calls_P: np.ndarray  # int64 judge calls used
    top_count_P: np.ndarray  # int64 how many share the winning score (1 = no tie); for
    # majority vote, the answers tied for most frequent (0 = no answer parsed)


def _point_ratings(judge: PointJudge, cands_PR: np.ndarray) -> np.ndarray:
    return tournament.check_ratings(cands_PR, judge(cands_PR.copy()), "cands_PR")


def pointwise(judge: PointJudge, num_problems: int, num_candidates: int, budget: int,
              seed: int) -> Choice:
    """Best-of-N by pointwise rating: each candidate rated `budget // N` times (one batched
    judge call per repeat), the best mean rating wins, ties broken at random."""
    tournament.validate(num_problems, num_candidates, budget, tau=1.0)
    repeats = budget // num_candidates
    if repeats < 1:
        raise ValueError(f"budget={budget} is below N={num_candidates}: pointwise best-of-N "
                         "rates every candidate at least once")
    cands_PR = np.broadcast_to(np.arange(num_candidates), (num_problems, num_candidates))
    mean_PN = sum(_point_ratings(judge, cands_PR) for _ in range(repeats)) / repeats
    chosen_P, top_P = argmax_random_ties(mean_PN, np.random.default_rng(seed))
    return Choice(chosen_P, np.full(num_problems, repeats * num_candidates), top_P)


def random_pairing(judge: PairJudge, num_problems: int, num_candidates: int, budget: int,
                   seed: int, *, tau: float = 0.1) -> tournament.TournamentResult:
    """The paper's ablation: rounds of random disjoint pairs at the same budget, scored as
    the Swiss tournament scores them."""
    tournament.validate(num_problems, num_candidates, budget, tau)
    def pick(st, r, limit_P, rng):
        return tournament.random_pairs(num_candidates, limit_P, rng)

    return tournament.play(judge, num_problems, num_candidates, budget,
                           np.random.default_rng(seed), pick, tau)


def knockout(judge: PairJudge, num_problems: int, num_candidates: int, budget: int,
             seed: int) -> Choice:
    """Single elimination from a random seeding: N - 1 matches of K = budget // (N - 1) calls
    each (so (N - 1) K <= budget); a match goes to the larger summed rating margin over its
    K calls, ties at random; with an odd field one random survivor gets a bye."""
    tournament.validate(num_problems, num_candidates, budget, tau=1.0)
    k = budget // (num_candidates - 1)
    if k < 1:
        raise ValueError(f"budget={budget} is below the N - 1 = {num_candidates - 1} matches "
                         "of a knockout")
    rng = np.random.default_rng(seed)
    alive_PA = rng.permuted(np.broadcast_to(np.arange(num_candidates),
                                            (num_problems, num_candidates)), axis=1)
    calls = 0
    while alive_PA.shape[1] > 1:
        m = alive_PA.shape[1] // 2
        match_PM2 = alive_PA[:, : 2 * m].reshape(num_problems, m, 2)
        pairs_PR2 = np.repeat(match_PM2, k, axis=1)
        ratings = tournament.check_ratings(pairs_PR2, judge(pairs_PR2.copy()))
        margin_PM = (ratings[..., 0] - ratings[..., 1]).reshape(num_problems, m, k).sum(-1)
        a_wins = (margin_PM > 0) | ((margin_PM == 0) & (rng.random(margin_PM.shape) < 0.5))
        winners_PM = np.where(a_wins, match_PM2[..., 0], match_PM2[..., 1])
        alive_PA = rng.permuted(np.concatenate([winners_PM, alive_PA[:, 2 * m:]], 1), axis=1)
        calls += m * k
    return Choice(alive_PA[:, 0], np.full(num_problems, calls), np.ones(num_problems, np.int64))


def answer_ids(answers_PN: Sequence[Sequence]) -> np.ndarray:
    """Canonical answers as int ids per problem (equal answers, equal ids); None -> -1."""
    out = []
    for row in answers_PN:
        ids: dict = {}
        out.append([-1 if a is None else ids.setdefault(a, len(ids)) for a in row])
    return np.asarray(out, np.int64)


def _answer_counts(ids_PN: np.ndarray) -> np.ndarray:
    """How many candidates of the problem share each candidate's answer (0 for None)."""
    same_PNN = (ids_PN[:, :, None] == ids_PN[:, None, :]) & (ids_PN[:, :, None] >= 0)
    return same_PNN.sum(-1)


def majority_vote(answers_PN: Sequence[Sequence], seed: int) -> Choice:
    """Self-consistency: a candidate with the most frequent answer (ties between answers at
    random); a problem with no answers at all gets a random candidate. No judge calls."""
    ids_PN = answer_ids(answers_PN)
    counts_PN = _answer_counts(ids_PN)
    chosen_P, _ = argmax_random_ties(counts_PN, np.random.default_rng(seed))
    # The tie that matters is between answers, not candidates: count the distinct ones.
    best_PN = counts_PN == counts_PN.max(-1, keepdims=True)
    answers_tied_P = np.array([len(set(ids[best & (ids >= 0)]))
                               for ids, best in zip(ids_PN, best_PN)])
    p = len(ids_PN)
    return Choice(chosen_P, np.zeros(p, np.int64), answers_tied_P)


def best_of_majority(judge: PointJudge, answers_PN: Sequence[Sequence], seed: int, *,
                     alpha: float = 0.1) -> Choice:
    """Best-of-Majority (arXiv 2510.03199) for one submission (k = 1): keep the candidates
    whose answer has empirical frequency >= `alpha` among the N samples, rate only those
    (one pointwise call each), pick the best rating, ties at random. The paper's alpha is a
    tuned threshold; 0.1 is our default. When no answer reaches alpha (or none parses), the
    most frequent answers' candidates are kept instead, so the set is never empty."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha={alpha}; the frequency threshold must be in (0, 1]")
    counts_PN = _answer_counts(answer_ids(answers_PN))
    p, n = counts_PN.shape
    keep_PN = counts_PN >= alpha * n
    fallback_PN = counts_PN == counts_PN.max(-1, keepdims=True)
    keep_PN = np.where(keep_PN.any(-1, keepdims=True), keep_PN, fallback_PN)
    cands_PR = np.where(keep_PN, np.arange(n), -1)
    ratings_PN = _point_ratings(judge, cands_PR)
    chosen_P, top_P = argmax_random_ties(ratings_PN, np.random.default_rng(seed), keep_PN)
    return Choice(chosen_P, keep_PN.sum(-1), top_P)


def first_candidate(num_problems: int) -> Choice:
    """Pass@1: the first sample, no verification."""
    return Choice(np.zeros(num_problems, np.int64), np.zeros(num_problems, np.int64),
                  np.ones(num_problems, np.int64))


def oracle(correct_PN: np.ndarray) -> Choice:
    """Pass@N: a correct candidate whenever there is one (the ceiling)."""
    correct_PN = np.asarray(correct_PN, bool)
    p = len(correct_PN)
    return Choice(correct_PN.argmax(-1), np.zeros(p, np.int64), np.ones(p, np.int64))
