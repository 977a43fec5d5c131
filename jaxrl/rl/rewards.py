"""Rewards: one interface, two kinds.

    reward(tokens_BN, lengths_B, finished_B, batch) -> (rewards_B, metrics)

- `TaskReward` runs an embedded task's pure-JAX checker: it lives inside the jitted step.
- `HostReward` decodes the completions and calls a Python function per sample (math
  answers, user code) between the rollout and the update. A function that raises, runs
  past its timeout, or returns anything but a finite real number within float32's range
  gives that sample reward 0 and is counted; it never ends the run.

Both add an optional format reward: `format_coef` for a completion that ended on its stop
token and states an answer (the embedded tasks' `#<answer>` line).
"""
from __future__ import annotations

import concurrent.futures
import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxrl.models.tokenizer import Tokenizer
from jaxrl.tasks.base import HASH_ID, Task, visible_tokens


class TaskReward:
    """1 for a correct answer by the task's JAX checker, plus the optional format reward."""

    is_host = False

    def __init__(self, task: Task, format_coef: float = 0.0):
        self.task = task
        self.format_coef = format_coef

    def __call__(self, tokens_BN, lengths_B, finished_B, targets_BT):
        correct_B = jax.vmap(self.task.jax_check)(tokens_BN, lengths_B, targets_BT)
        has_answer_B = jax.vmap(lambda t, n: jnp.any((visible_tokens(t, n)[0] == HASH_ID)))(
            tokens_BN, lengths_B)
        formatted_B = (finished_B & has_answer_B).astype(jnp.float32)
        rewards_B = correct_B.astype(jnp.float32) + self.format_coef * formatted_B
        return rewards_B, {"accuracy": correct_B.astype(jnp.float32).mean(),
                           "format_rate": formatted_B.mean()}


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def valid_reward(value: Any) -> float | None:
    """`value` as a float if it is a real number (Python or NumPy scalar, or a 0-d integer
    or float array) that is finite and within float32's range, else None. Booleans and
    strings are refused: `True` or `"1"` from a reward function is a bug, not a score."""
    if isinstance(value, (bool, np.bool_)):
        return None
    is_array = hasattr(value, "dtype") and np.ndim(value) == 0 and (
        np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating))
    if not (isinstance(value, numbers.Real) or is_array):
        return None
    try:
        value = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return value if math.isfinite(value) and abs(value) <= _FLOAT32_MAX else None


class HostReward:
    """`fn(completion_text, answer) -> float` per sample, on a thread pool.

    A sample scores 0 and is counted when `fn` raises (`reward_errors`), runs past its time
    (`reward_timeouts`) or returns what `valid_reward` refuses (`reward_invalid`: NaN, inf,
    1e40, a bool, a string, None, ...), so one bad value never poisons the batch's update.

    Each call gets `timeout_s`; with `workers` threads the batch waits at most
    `timeout_s * ceil(B / workers)`, and whatever has not finished by then scores 0. A
    timed-out call cannot be killed (Python threads): it keeps its worker until it returns,
    so `fn` that may hang for long should run its work in a subprocess.
    """

    is_host = True

    def __init__(self, fn: Callable[[str, str], float], tokenizer: Tokenizer,
                 timeout_s: float = 5.0, format_fn: Callable[[str], bool] | None = None,
                 format_coef: float = 0.0, workers: int = 8):
        self.fn, self.tokenizer, self.timeout_s, self.workers = fn, tokenizer, timeout_s, workers
        self.format_fn, self.format_coef = format_fn, format_coef
        self._pool = concurrent.futures.ThreadPoolExecutor(workers)

    def __call__(self, tokens_BN, lengths_B, finished_B, answers: list[str]):
        tokens_BN, lengths_B, finished_B = map(np.asarray, (tokens_BN, lengths_B, finished_B))
        eos = set(self.tokenizer.eos_ids)
        texts = [self.tokenizer.decode([t for t in row[:n].tolist() if t not in eos])
                 for row, n in zip(tokens_BN, lengths_B)]
        futures = [self._pool.submit(self.fn, t, a) for t, a in zip(texts, answers)]
        done, _ = concurrent.futures.wait(
            futures, timeout=self.timeout_s * -(-len(futures) // self.workers))
        rewards = np.zeros(len(texts), np.float32)
        errors, invalid = 0, []
        for i, fut in enumerate(futures):
            if fut in done:
                try:
                    value = fut.result()
                except Exception:  # noqa: BLE001  a user reward function may raise anything
                    errors += 1
                    continue
                reward = valid_reward(value)
                if reward is None:
                    invalid.append((i, value))
                else:
                    rewards[i] = reward
        if invalid:
            i, value = invalid[0]
            logging.warning("%d reward(s) were not finite float32 numbers and scored 0; the "
                            "first, sample %d: %.80r", len(invalid), i, value)
        metrics = {"accuracy": float((rewards > 0).mean()) if texts else 0.0,
                   "reward_errors": errors, "reward_timeouts": len(futures) - len(done),
                   "reward_invalid": len(invalid)}
        if self.format_fn is not None:
            formatted = np.asarray([bool(f) and self.format_fn(t) for f, t in zip(finished_B, texts)],
                                   np.float32)
            rewards = rewards + self.format_coef * formatted
            metrics["format_rate"] = float(formatted.mean()) if texts else 0.0
        return rewards, metrics


_COUNTS = ("reward_errors", "reward_timeouts", "reward_invalid")


def across_processes(metrics: dict) -> dict:
    """A host reward's metrics over every process's rows: counts summed, rates averaged
    (every process scores the same number of rows). Every process must call it."""
    if jax.process_count() == 1:
        return metrics
    from jax.experimental import multihost_utils
    gathered = multihost_utils.process_allgather(
        {k: np.asarray(v, np.int32 if k in _COUNTS else np.float32) for k, v in metrics.items()})
    return {k: int(v.sum()) if k in _COUNTS else float(v.mean()) for k, v in gathered.items()}


def for_source(source, format_coef: float):
    """The reward of a prompt source (tasks/prompts.py): its task's JAX checker in the step
    when it has a task, else its host `check` with the format test `has_answer`."""
    if source.task is not None:
        return TaskReward(source.task, format_coef)
    return HostReward(source.check, source.tokenizer, timeout_s=source.reward_timeout_s,
                      format_fn=source.has_answer, format_coef=format_coef)
