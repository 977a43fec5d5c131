"""What every embedded task shares: the `Problem` record, the `Task` interface, the
long-tailed step count, and the answer convention with its Python and JAX readers.

A completion is step-by-step lines followed by one answer line `#<answer>`. The answer is
whatever follows the LAST '#' up to the next newline or the end of the text; '#' is used
for nothing else, so a model may think out loud before it commits.

Two checkers per task, which must agree exactly:

- `task.check(problem, text)` reads the decoded completion (text before the first EOS);
  it is the readable reference.
- `task.jax_check(completion_N, length, target_T)` reads CharTokenizer ids inside a jitted
  step. Its contract is

      jax_check(ids_N, length, problem.target) == check(problem, decode(ids_N[:stop]))

  where `stop` is `length` or the first EOS, whichever comes first, and `decode` is
  CharTokenizer's, which skips ids that have no character (pad, bos). Ids outside the
  tokenizer's vocabulary (a model whose embedding table is padded) are skipped too.
  It is pure jnp with static shapes: jit it, vmap it over a batch.

`problem.target` is a fixed-length (`task.target_len`) tuple of ints, padded with
`TARGET_PAD`, that holds all the JAX checker needs: the answer's token ids, or for
countdown the numbers themselves.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.models.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer()
EOS_ID = TOKENIZER.eos_ids[0]
TARGET_PAD = -1  # never a token id, never a parsed number
DEFAULT_DIFFICULTY = 1

_FIRST_CHAR_ID = TOKENIZER.encode(CharTokenizer.ALPHABET[0])[0]


def char_id(ch: str) -> int:
    return TOKENIZER.encode(ch)[0]


HASH_ID = char_id("#")
NEWLINE_ID = char_id("\n")
DIGIT0_ID = char_id("0")
assert TOKENIZER.encode("0123456789") == list(range(DIGIT0_ID, DIGIT0_ID + 10))


@dataclasses.dataclass(frozen=True)
class Problem:
    prompt: str  # what the model is given, ends with a newline
    solution: str  # reference completion: step lines, then `#<answer>`
    answer: str  # the exact text that must follow the last '#'
    target: tuple[int, ...]  # the JAX checker's view; length task.target_len


def long_tailed_int(rng: np.random.Generator, low: int, high: int, alpha: float) -> int:
    """A draw from [low, high] with P(k) proportional to (k - low + 1) ** -alpha.

    A Zipf law truncated at `high`: most draws are `low` or just above it, a few are many
    times larger, and none exceeds the static budget `high`. Smaller alpha, heavier tail.
    """
    ks = np.arange(low, high + 1)
    p = (ks - low + 1.0) ** -alpha
    return int(rng.choice(ks, p=p / p.sum()))


def pad_target(values: list[int], target_len: int) -> tuple[int, ...]:
    if len(values) > target_len:
        raise ValueError(f"target {values} is longer than target_len={target_len}")
    return tuple(values) + (TARGET_PAD,) * (target_len - len(values))


@dataclasses.dataclass(frozen=True)
class Level:
    """The settings every task's difficulty table has; tasks add their own fields."""

    min_steps: int  # every problem needs at least this many steps
    alpha: float  # tail exponent of the extra steps (see long_tailed_int)
    max_steps: int  # default cap on steps; the static budget for completion lengths


class Task(abc.ABC):
    """A seeded generator of problems at a fixed difficulty, with its two checkers.

    Subclasses set `name` and `LEVELS` (index = difficulty) and implement the abstract
    methods. `max_steps` overrides the level's cap on steps (and so on lengths).
    """

    name: ClassVar[str]
    LEVELS: ClassVar[tuple[Level, ...]]

    def __init__(self, difficulty: int = DEFAULT_DIFFICULTY, max_steps: int | None = None):
        valid = tuple(range(len(self.LEVELS)))
        if isinstance(difficulty, bool) or difficulty not in valid:
            raise ValueError(f"{self.name} difficulty must be one of {valid}, got {difficulty!r}")
        self.difficulty = difficulty
        self.level = self.LEVELS[difficulty]
        if max_steps is None:
            max_steps = self.level.max_steps
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) \
                or max_steps < self.level.min_steps:
            raise ValueError(f"{self.name} max_steps must be an int >= {self.level.min_steps} "
                             f"(the minimum at difficulty {difficulty}), got {max_steps!r}")
        self.max_steps = max_steps

    def __repr__(self) -> str:
        return f"{type(self).__name__}(difficulty={self.difficulty}, max_steps={self.max_steps})"

    def num_steps(self, rng: np.random.Generator) -> int:
        return long_tailed_int(rng, self.level.min_steps, self.max_steps, self.level.alpha)

    @property
    @abc.abstractmethod
    def target_len(self) -> int:
        """Static length of `problem.target`."""

    @property
    @abc.abstractmethod
    def max_prompt_len(self) -> int:
        """No prompt is longer than this many characters."""

    @property
    @abc.abstractmethod
    def max_solution_len(self) -> int:
        """No reference solution is longer than this many characters (a max_new_tokens)."""

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> Problem:
        """One problem; the same generator state gives the same problem."""

    @abc.abstractmethod
    def check(self, problem: Problem, completion: str) -> bool:
        """Whether the completion text (before any EOS) is right: the reference checker."""

    @abc.abstractmethod
    def jax_check(self, completion_N: jax.Array, length: jax.Array,
                  target_T: jax.Array) -> jax.Array:
        """`check` on CharTokenizer ids, for one row: completion_N int ids, length an int32
        scalar, target_T = problem.target as int32 (T = target_len). Returns a bool scalar."""


class AnswerMatchTask(Task):
    """A task whose completion is right iff its final answer is exactly `problem.answer`
    (the steps are the model's business). The target is the answer's token ids."""

    def check(self, problem: Problem, completion: str) -> bool:
        return final_answer(completion) == problem.answer

    def jax_check(self, completion_N, length, target_T):
        tokens_N, n = visible_tokens(completion_N, length)
        return answer_equals(tokens_N, n, target_T)

    def make_target(self, answer: str) -> tuple[int, ...]:
        return pad_target(TOKENIZER.encode(answer), self.target_len)


# ---- The answer convention, in Python ----

def final_answer(completion: str) -> str | None:
    """The text after the last '#' up to the next newline; None without a '#'."""
    i = completion.rfind("#")
    return None if i < 0 else completion[i + 1:].split("\n", 1)[0]


# ---- The answer convention, in JAX (static shapes, per row; vmap for batches) ----

def visible_tokens(completion_N: jax.Array, length: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The ids the Python checker sees, packed to the front: stops at `length` or the first
    EOS, and skips ids that have no character. Returns (tokens_N, n); tokens_N[n:] is pad."""
    n_max = completion_N.shape[0]
    pos_N = jnp.arange(n_max)
    completion_N = completion_N.astype(jnp.int32)
    before_stop_N = (pos_N < length) & (jnp.cumsum(completion_N == EOS_ID) == 0)
    keep_N = before_stop_N & (completion_N >= _FIRST_CHAR_ID) & (
        completion_N < TOKENIZER.vocab_size)
    n = keep_N.sum(dtype=jnp.int32)
    order_N = jnp.argsort(jnp.where(keep_N, 0, 1), stable=True)  # kept ids first, in order
    return jnp.where(pos_N < n, completion_N[order_N], TOKENIZER.pad_id), n


def answer_span(tokens_N: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(has_hash, start, end): the answer is tokens_N[start:end], after the last '#' among
    the first n tokens, up to the next newline or n."""
    n_max = tokens_N.shape[0]
    pos_N = jnp.arange(n_max)
    last_hash = jnp.max(jnp.where((tokens_N == HASH_ID) & (pos_N < n), pos_N, -1))
    ends_N = ((tokens_N == NEWLINE_ID) | (pos_N >= n)) & (pos_N > last_hash)
    end = jnp.min(jnp.where(ends_N, pos_N, n_max))
    return last_hash >= 0, last_hash + 1, end


def answer_equals(tokens_N: jax.Array, n: jax.Array, target_T: jax.Array) -> jax.Array:
    """Whether the answer span is exactly the non-pad prefix of target_T (token ids)."""
    has_hash, start, end = answer_span(tokens_N, n)
    n_target = (target_T != TARGET_PAD).sum(dtype=jnp.int32)
    idx_T = jnp.clip(start + jnp.arange(target_T.shape[0]), 0, tokens_N.shape[0] - 1)
    same_T = (tokens_N[idx_T] == target_T) | (target_T == TARGET_PAD)
    return has_hash & (end - start == n_target) & jnp.all(same_T)
