"""The numbers a V1-Infer table reports, from choices and per-candidate correctness."""
from __future__ import annotations

import numpy as np


def pick_rate(correct_PN: np.ndarray, chosen_P: np.ndarray) -> tuple[float, float]:
    """Pass@1 of a choice: the fraction of problems whose chosen candidate is correct, and
    its standard error sqrt(q (1 - q) / P)."""
    correct_PN = np.asarray(correct_PN, bool)
    if np.shape(chosen_P) != correct_PN.shape[:1]:
        raise ValueError(f"chosen_P has shape {np.shape(chosen_P)}; expected "
                         f"({correct_PN.shape[0]},) for correct_PN of shape {correct_PN.shape}")
    hit_P = correct_PN[np.arange(len(correct_PN)), chosen_P]
    q = float(hit_P.mean())
    return q, float(np.sqrt(q * (1.0 - q) / len(hit_P)))


def tie_rate(top_count_P: np.ndarray) -> float:
    """The fraction of problems whose winning score was shared (broken at random)."""
    return float((np.asarray(top_count_P) > 1).mean())


def first_shown_win_rate(first_shown_wins: int, decisive_calls: int) -> float:
    """How often the solution shown first won, among calls that were not ties (0.5 = no
    position bias); NaN when there were no decisive calls."""
    return first_shown_wins / decisive_calls if decisive_calls else float("nan")


def total_calls(num_candidates: int, calls_P: np.ndarray) -> float:
    """Total cost per problem in calls: N generations plus the mean judge calls."""
    return num_candidates + float(np.mean(calls_P))
