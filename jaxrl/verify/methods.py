"""Every V1-Infer method at each judge budget, on one set of candidates: the roster that the
v1_infer job and bench/v1_synthetic.py both report.

Candidates are i.i.d. samples, so a method that needs M candidates uses the first M of
each problem's `widest(n, multipliers)`. At budget multiplier k the judge budget is
V = k N calls per problem:

- swiss (V1-Infer), random pairing, knockout: N candidates, V calls;
- pointwise, V calls: N candidates, each rated V / N times;
- pointwise, total-matched: N' = (N + V) / 2 candidates, N' calls, so N' generations + N'
  calls = N + V in all (at 3x with N = 16: the paper's pointwise N = 32, 32 calls, against
  pairwise N = 16, 48 calls);
- majority, N + V samples: no judge, the same count of model calls;

and, independent of V: Pass@1 (the first candidate), majority@N, Best-of-Majority@N (one
pointwise call per kept candidate) and oracle Pass@N.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxrl.verify import baselines, tournament

SWISS = "swiss (V1-Infer)"
BY_BUDGET = (SWISS, "random pairing", "knockout", "pointwise, V calls",
             "pointwise, total-matched N'=(N+V)/2", "majority, N+V samples")
FIXED = ("Pass@1 (first candidate)", "majority@N", "Best-of-Majority@N", "oracle Pass@N")
METHODS = BY_BUDGET + FIXED


@dataclasses.dataclass(frozen=True)
class Outcome:
    method: str
    multiplier: int | None  # None: the method spends no budget-dependent calls
    num_candidates: int  # the M candidates it chose among (the first M)
    choice: baselines.Choice
    judge: Any  # the judge it called (None for none), e.g. to read a ModelJudge's stats


def widest(n: int, multipliers: Sequence[int]) -> int:
    """Candidates per problem that every method of the roster needs: N + max V."""
    return n + max(multipliers) * n


def _as_choice(result: tournament.TournamentResult) -> baselines.Choice:
    top_P = (result.scores_PN == result.scores_PN.max(-1, keepdims=True)).sum(-1)
    return baselines.Choice(result.chosen_P, result.calls_P, top_P)


def run_all(pair_judge: Callable[[int], tournament.PairJudge],
            point_judge: Callable[[int], baselines.PointJudge], answers_PM: Sequence[Sequence],
            correct_PM: np.ndarray, n: int, multipliers: Sequence[int], seed: int, *,
            d_min: int, window: int, tau: float, alpha: float) -> list[Outcome]:
    """Every method of the roster. `pair_judge(m)` / `point_judge(m)` make a fresh judge over
    the first m candidates of each problem; `answers_PM` (canonical answers, None = none)
    and `correct_PM` cover at least `widest(n, multipliers)` candidates."""
    p = len(correct_PM)
    if np.shape(correct_PM)[1] < widest(n, multipliers):
        raise ValueError(f"correct_PM has {np.shape(correct_PM)[1]} candidates per problem; "
                         f"the roster needs {widest(n, multipliers)} (N + max V)")
    out = []

    def add(method, mult, m, judge, run):
        out.append(Outcome(method, mult, m, run(judge), judge))

    for k in multipliers:
        v, half = k * n, (n + k * n) // 2
        add(SWISS, k, n, pair_judge(n), lambda j: _as_choice(tournament.swiss(
            j, p, n, v, seed, d_min=d_min, window=window, tau=tau)))
        add(BY_BUDGET[1], k, n, pair_judge(n), lambda j: _as_choice(
            baselines.random_pairing(j, p, n, v, seed, tau=tau)))
        add(BY_BUDGET[2], k, n, pair_judge(n), lambda j: baselines.knockout(j, p, n, v, seed))
        add(BY_BUDGET[3], k, n, point_judge(n), lambda j: baselines.pointwise(j, p, n, v, seed))
        add(BY_BUDGET[4], k, half, point_judge(half),
            lambda j: baselines.pointwise(j, p, half, half, seed))
        add(BY_BUDGET[5], k, n + v, None, lambda j: baselines.majority_vote(
            [row[:n + v] for row in answers_PM], seed))
    first_n = [row[:n] for row in answers_PM]
    add(FIXED[0], None, n, None, lambda j: baselines.first_candidate(p))
    add(FIXED[1], None, n, None, lambda j: baselines.majority_vote(first_n, seed))
    add(FIXED[2], None, n, point_judge(n),
        lambda j: baselines.best_of_majority(j, first_n, seed, alpha=alpha))
    add(FIXED[3], None, n, None, lambda j: baselines.oracle(np.asarray(correct_PM)[:, :n]))
    return out
