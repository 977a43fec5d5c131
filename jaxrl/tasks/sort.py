"""Sorting a list of numbers, with a selection-sort trace.

    prompt:    "sort:5,3,9,1\n"
    solution:  "1,3,9,5\n1,3,5,9\n#1,3,5,9"

Selection sort from the left: at position i, the smallest remaining number (the first
one, if tied) is swapped into place, and the list is written after every swap that moves
something (so the trace length depends on the list, not only on its size). A completion is
right iff its answer (after the last '#') is exactly the ascending list, comma-separated,
no spaces. The steps are not checked.

The list length is 1 + a long-tailed number of steps (base.long_tailed_int); each line
is a whole list, so solution lengths grow quadratically with it and the tail is heavy.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxrl.tasks.base import AnswerMatchTask, Level, Problem


@dataclasses.dataclass(frozen=True)
class SortLevel(Level):
    max_value: int  # numbers are drawn from [0, max_value]; repeats allowed


class Sort(AnswerMatchTask):
    name = "sort"
    LEVELS = (
        SortLevel(min_steps=1, alpha=2.5, max_steps=7, max_value=9),
        SortLevel(min_steps=2, alpha=2.0, max_steps=11, max_value=99),
        SortLevel(min_steps=3, alpha=1.7, max_steps=15, max_value=999),
        SortLevel(min_steps=4, alpha=1.5, max_steps=19, max_value=999),
    )
    level: SortLevel

    @property
    def _max_list_len(self) -> int:
        """Characters in the longest list: max_steps + 1 numbers and the commas."""
        return (self.max_steps + 1) * (len(str(self.level.max_value)) + 1) - 1

    @property
    def target_len(self) -> int:
        return self._max_list_len

    @property
    def max_prompt_len(self) -> int:
        return len("sort:\n") + self._max_list_len

    @property
    def max_solution_len(self) -> int:
        return self.max_steps * (self._max_list_len + 1) + 1 + self._max_list_len

    def sample(self, rng: np.random.Generator) -> Problem:
        values = [int(v) for v in rng.integers(0, self.level.max_value + 1,
                                               self.num_steps(rng) + 1)]
        lines = []
        trace = list(values)
        for i in range(len(trace) - 1):
            j = i + int(np.argmin(trace[i:]))  # the first of the smallest
            if trace[j] != trace[i]:
                trace[i], trace[j] = trace[j], trace[i]
                lines.append(_join(trace))
        answer = _join(trace)
        return Problem(prompt=f"sort:{_join(values)}\n",
                       solution="".join(f"{ln}\n" for ln in lines) + f"#{answer}",
                       answer=answer, target=self.make_target(answer))


def _join(values: list[int]) -> str:
    return ",".join(map(str, values))
