"""Rewards: one interface, two kinds.

    reward(tokens_BN, lengths_B, finished_B, batch) -> (rewards_B, metrics)

- `TaskReward` runs an embedded task's pure-JAX checker: it lives inside the jitted step.
- `HostReward` decodes the completions and calls a Python function per sample (math
  answers, user code) between the rollout and the update. A function that raises or runs
  past its timeout gives that sample reward 0 and is counted; it never ends the run.

Both add an optional format reward: `format_coef` for a completion that ended on its stop
token and states an answer (the embedded tasks' `#<answer>` line).
"""
from __future__ import annotations

import concurrent.futures
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

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


class HostReward:
    """`fn(completion_text, answer) -> float` per sample, on a thread pool.

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
        errors = 0
        for i, fut in enumerate(futures):
            if fut in done:
                try:
                    rewards[i] = float(fut.result())
                except Exception:  # noqa: BLE001  a user reward function may raise anything
                    errors += 1
        metrics = {"accuracy": float((rewards > 0).mean()) if texts else 0.0,
                   "reward_errors": errors, "reward_timeouts": len(futures) - len(done)}
        if self.format_fn is not None:
            formatted = np.asarray([bool(f) and self.format_fn(t) for f, t in zip(finished_B, texts)],
                                   np.float32)
            rewards = rewards + self.format_coef * formatted
            metrics["format_rate"] = float(formatted.mean()) if texts else 0.0
        return rewards, metrics


def for_source(source, format_coef: float):
    """The reward of a prompt source (tasks/prompts.py): its task's JAX checker in the step
    when it has a task, else its host `check` with the format test `has_answer`."""
    if source.task is not None:
        return TaskReward(source.task, format_coef)
    return HostReward(source.check, source.tokenizer, timeout_s=source.reward_timeout_s,
                      format_fn=source.has_answer, format_coef=format_coef)
