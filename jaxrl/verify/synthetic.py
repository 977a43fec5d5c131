"""Synthetic judges with known noise: test doubles for the tournament and the baselines.

The world: candidate i of problem p has a latent quality q ~ Uniform(0, 1) (`quality_PN`)
and is correct when q >= 1 - `correct_rate`, so a candidate is correct with probability
`correct_rate`. Correct candidates share the right answer; wrong ones draw one of a few
wrong answers (`answers_PN`) with shares 0.4 / 0.35 / 0.25 of the wrong ones: at a correct
rate of 0.3 the commonest wrong answer (0.28) nearly ties the right one, a hard problem on
which majority voting is close to a coin flip between them.

Both judges read solutions the same way: every reading of a solution in a call perceives
s = q + sigma z, z standard normal, fresh per reading (the matched noise). They differ in
how they report it, which is the paper's point:

- Pairwise (`NoisyPairJudge`): a call reads both solutions and rates them relative to each
  other: the one perceived better gets 10, the other clip(10 - round(9 |s_a - s_b|), 1, 10),
  so perceived gaps under 1/18 are ties. Its pairwise error rate e is the probability, over
  two random candidates, of rating the worse one higher, a tie counting half;
  `sigma_for_error(e)` inverts it exactly (numerical integration, then bisection).
- Pointwise (`NoisyPointJudge`): a call reads one solution and rates it on an absolute
  scale with the over-confidence the paper saw (12 of 16 candidates rated 10/10):
  clip(round(10 - SPREAD (1 - s)), 1, 10) with SPREAD = 4, so even the worst solution's
  mean rating is 6 and the top of the scale is crowded with ties.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

POINTWISE_SPREAD = 4.0  # rating points between the worst and the best perceived solution
TIE_GAP = 1.0 / 18.0  # pairwise ratings tie when the perceived gap rounds to 0 on 9 points
WRONG_ANSWER_SHARES = (0.4, 0.35, 0.25)  # how the wrong candidates split over wrong answers


@dataclasses.dataclass(frozen=True)
class World:
    quality_PN: np.ndarray  # float64 latent quality in [0, 1)
    correct_PN: np.ndarray  # bool: quality >= 1 - correct_rate
    answers_PN: np.ndarray  # int64 canonical answer ids; 0 = the right answer


def sample_world(num_problems: int, num_candidates: int, correct_rate: float,
                 rng: np.random.Generator) -> World:
    quality_PN = rng.random((num_problems, num_candidates))
    correct_PN = quality_PN >= 1.0 - correct_rate
    wrong_PN = 1 + rng.choice(len(WRONG_ANSWER_SHARES), size=correct_PN.shape,
                              p=WRONG_ANSWER_SHARES)
    return World(quality_PN, correct_PN, np.where(correct_PN, 0, wrong_PN))


def _check_error(error: float) -> None:
    if not 0.0 <= error < 0.5:
        raise ValueError(f"error rate {error} must be in [0, 0.5): at 0.5 the judge is a coin")


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x) / math.sqrt(2.0)))


_GAP_GRID = (np.arange(4000) + 0.5) / 4000  # midpoint rule over the true gap g in (0, 1)


def pair_error(sigma: float) -> float:
    """The pairwise judge's error rate for two random candidates: the true gap g = |q_a - q_b|
    has density 2 (1 - g); the perceived gap is g + sigma sqrt(2) z. Wrong when it is below
    -1/18, a tie (half) when within 1/18 of 0. Midpoint rule, error O(1e-7)."""
    g, scale = _GAP_GRID, sigma * math.sqrt(2.0)
    wrong = _normal_cdf((-g - TIE_GAP) / scale)
    tie = _normal_cdf((TIE_GAP - g) / scale) - wrong
    return float(np.mean(2.0 * (1.0 - g) * (wrong + 0.5 * tie)))


def sigma_for_error(error: float) -> float:
    """The reading noise sigma whose pairwise error rate is `error` (bisection: the error
    rises monotonically with sigma)."""
    if not pair_error(1e-9) < error < 0.5:
        raise ValueError(f"error rate {error} must be in ({pair_error(1e-9):.4f}, 0.5): the "
                         "lower end is the noiseless judge's ties, 0.5 a coin")
    lo, hi = 1e-9, 100.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if pair_error(mid) < error else (lo, mid)
    return 0.5 * (lo + hi)


class NoisyPairJudge:
    """The pairwise judge above, as a `judge(pairs_PR2) -> ratings_PR2`."""

    def __init__(self, quality_PN: np.ndarray, error: float, rng: np.random.Generator):
        self.quality_PN, self.rng = np.asarray(quality_PN), rng
        self.sigma = sigma_for_error(error)

    def __call__(self, pairs_PR2: np.ndarray) -> np.ndarray:
        rows = np.arange(len(pairs_PR2))[:, None, None]
        seen_PR2 = self.quality_PN[rows, np.maximum(pairs_PR2, 0)] + (
            self.sigma * self.rng.standard_normal(pairs_PR2.shape))
        gap_PR2 = seen_PR2.max(-1, keepdims=True) - seen_PR2
        ratings = np.clip(10.0 - np.round(9.0 * gap_PR2), 1.0, 10.0)
        return np.where(pairs_PR2 >= 0, ratings, np.nan)


class NoisyPointJudge:
    """The pointwise judge above, as a `judge(cands_PR) -> ratings_PR` (-1 = empty), with the
    reading noise of the pairwise judge of error rate `error`."""

    def __init__(self, quality_PN: np.ndarray, error: float, rng: np.random.Generator):
        self.quality_PN, self.rng = np.asarray(quality_PN), rng
        self.sigma = sigma_for_error(error)

    def __call__(self, cands_PR: np.ndarray) -> np.ndarray:
        rows = np.arange(len(cands_PR))[:, None]
        seen_PR = self.quality_PN[rows, np.maximum(cands_PR, 0)] + (
            self.sigma * self.rng.standard_normal(cands_PR.shape))
        ratings = np.clip(np.round(10.0 - POINTWISE_SPREAD * (1.0 - seen_PR)), 1.0, 10.0)
        return np.where(cands_PR >= 0, ratings, np.nan)
