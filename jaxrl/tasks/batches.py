"""Problems as padded arrays: what the jitted steps consume.

The problems of training step `s` are drawn from `np.random.default_rng([seed, s])`, so the
data position of a run is its step number: a resumed run sees the same problems as an
uninterrupted one without storing a reader state. Held-out problems use a separate stream.
"""
from __future__ import annotations

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


def bucket_len(problems: list[Problem], cap: int, multiple: int = 16) -> int:
    """The batch's longest solution (plus EOS) rounded up to `multiple`, at most `cap`:
    SFT pads to this instead of the task's worst case, with few distinct shapes to compile."""
    longest = max(len(p.solution) for p in problems) + 1
    return min(-(-longest // multiple) * multiple, cap)


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
