"""Problems as padded arrays: what the jitted steps consume.

The problems of training step `s` are drawn from `np.random.default_rng([seed, s])`, so the
data position of a run is its step number: a resumed run sees the same problems as an
uninterrupted one without storing a reader state. Held-out problems use a separate stream.
"""
from __future__ import annotations

import bisect
import math

import numpy as np
from flax import struct

from jaxrl.tasks.base import EOS_ID, TOKENIZER, Problem, Task

_HELD_OUT_STREAM = 2**31 - 1  # never a training step
_POOL_STREAM = 2**31 - 2  # the finite RL prompt pool (task.train_pool)


@struct.dataclass
class TaskBatch:
    prompts_PL: np.ndarray  # int32, right-padded with pad ids
    prompt_lengths_P: np.ndarray  # int32
    targets_PT: np.ndarray  # int32, the JAX checker's view of each problem
    solutions_PN: np.ndarray  # int32 reference completion + EOS, right-padded (SFT)
    solution_lengths_P: np.ndarray  # int32, EOS included


def pad_rows(rows: list[list[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token lists right-padded to `[len(rows), width]` int32, and their lengths."""
    out = np.full((len(rows), width), pad_id, np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out, np.asarray([len(row) for row in rows], np.int32)


def encode(problems: list[Problem], prompt_len: int, solution_len: int) -> TaskBatch:
    """Pads prompts to `prompt_len` and solutions (plus EOS) to `solution_len` tokens."""
    prompts = [TOKENIZER.encode(prob.prompt) for prob in problems]
    solutions = [TOKENIZER.encode(prob.solution) + [EOS_ID] for prob in problems]
    for prob, prompt, solution in zip(problems, prompts, solutions):
        if len(prompt) > prompt_len or len(solution) > solution_len:
            raise ValueError(f"problem {prob.prompt!r} needs {len(prompt)} prompt and "
                             f"{len(solution)} solution tokens; budgets are {prompt_len} and "
                             f"{solution_len}")
    prompts_PL, prompt_lengths_P = pad_rows(prompts, prompt_len, TOKENIZER.pad_id)
    solutions_PN, solution_lengths_P = pad_rows(solutions, solution_len, TOKENIZER.pad_id)
    targets = np.asarray([prob.target for prob in problems], np.int32)
    return TaskBatch(prompts_PL, prompt_lengths_P, targets, solutions_PN, solution_lengths_P)


# SFT pads each batch to a rung of this ladder: few shapes (one compile each), little waste.
BUCKET_RATIO, BUCKET_MULTIPLE = 1.25, 16


def bucket_ladder(cap: int) -> list[int]:
    """The padded lengths SFT batches use: 16, then x1.25 rounded up to a multiple of 16
    (16, 32, 48, 64, 80, 112, 144, 192, 240, 304, ...), keeping the rungs that a x1.25 step
    still fits under `cap`, then `cap` itself (the task's budget).

    Measured on the embedded tasks (`python -m bench.sft_padding`, 2000 batches of 64 per
    task and difficulty; waste = padded solution slots / all solution slots, shapes = distinct
    padded lengths = compiles): x1.25 wastes 0-4 points more than rounding up to a multiple of
    16 (the previous rule) and compiles 2-7 shapes instead of 2-69 (sort 1: 88% and 7 shapes
    against 86% and 24; sort 3: 86% and 6 against 84% and 69); powers of two save 0-4 more
    shapes for up to 7 more points. Waste stays high under any rule, as solution lengths are
    long-tailed and a batch pads to its longest: packing, not buckets, is what recovers it.
    """
    rungs, x = [], BUCKET_MULTIPLE
    while x * BUCKET_RATIO <= cap:
        rungs.append(x)
        x = -(-math.ceil(x * BUCKET_RATIO) // BUCKET_MULTIPLE) * BUCKET_MULTIPLE
    return rungs + [cap]


def bucket_len(problems: list[Problem], cap: int) -> int:
    """The shortest rung of `bucket_ladder(cap)` that fits the batch's longest solution
    (plus EOS): SFT pads to this instead of the task's worst case."""
    longest = max(len(p.solution) for p in problems) + 1
    ladder = bucket_ladder(cap)
    return ladder[bisect.bisect_left(ladder, min(longest, cap))]


def budgets(task: Task) -> tuple[int, int]:
    """(prompt_len, solution_len) that fit every problem of the task (EOS included)."""
    return task.max_prompt_len, task.max_solution_len + 1


def train_problems(task: Task, seed: int, step: int, n: int) -> list[Problem]:
    rng = np.random.default_rng([seed, step])
    return [task.sample(rng) for _ in range(n)]


def train_pool(task: Task, seed: int, size: int) -> list[Problem]:
    """A fixed pool of training problems: RL datasets are finite, and prompts that recur
    across steps are what the rollout history of speculative decoding drafts from."""
    rng = np.random.default_rng([seed, _POOL_STREAM])
    return [task.sample(rng) for _ in range(size)]


def epoch_indices(seed: int, step: int, n: int, size: int) -> np.ndarray:
    """Indices into a dataset of `size` items for step `step`'s `n` items: positions
    `step * n .. step * n + n - 1` of the endless sequence that visits every item once per
    epoch, in the order of `default_rng([seed, epoch]).permutation(size)`."""
    epoch_P, offset_P = np.divmod(step * n + np.arange(n), size)
    order = {e: np.random.default_rng([seed, e]).permutation(size) for e in np.unique(epoch_P)}
    return np.asarray([order[e][o] for e, o in zip(epoch_P, offset_P)], np.int64)


def held_out_problems(task: Task, seed: int, n: int) -> list[Problem]:
    rng = np.random.default_rng([seed, _HELD_OUT_STREAM])
    return [task.sample(rng) for _ in range(n)]
