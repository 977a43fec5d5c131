"""Countdown: reach the target from the given numbers with + - * /, one step per line.

    prompt:    "24:3,4,6,8\n"            (target, then the numbers)
    solution:  "8-4=4\n6*4=24\n#24"      (any valid solution is right, not just this one)

A completion is right iff
- the text before the last '#' is one or more step lines, each `a op b=c` and a newline,
  where a, b, c are non-negative decimal integers of at most MAX_DIGITS digits with no
  leading zeros, op is one of + - * /, and c = a op b exactly ('-' may not go below zero,
  '/' must divide exactly);
- a and b are available: given numbers or results of earlier steps, each used at most
  once (a multiset: a number given twice may be used twice);
- the last step's result is the target, and the answer (after the last '#', up to a
  newline) is the target, written canonically.
Not every number has to be used.

Problems are built forward: draw the numbers, then repeatedly combine two available
numbers with a random valid operation until one is left; that is the target (it is never
one of the given numbers, and every intermediate value is in [1, value_bound]). The count
of numbers is 1 + a long-tailed number of steps (base.long_tailed_int).

`problem.target` is (target, numbers..., pad). The JAX checker is a small state machine
scanned over the tokens (see `_scan_steps`).
"""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.tasks.base import (DIGIT0_ID, NEWLINE_ID, TARGET_PAD, Level, Problem, Task,
                              answer_span, char_id, final_answer, pad_target, visible_tokens)

MAX_DIGITS = 6  # longer numbers are malformed; keeps every int32 computation exact
OPS = "+-*/"
_NUMBER = f"(0|[1-9][0-9]{{0,{MAX_DIGITS - 1}}})"
_STEP = re.compile(f"{_NUMBER}([-+*/]){_NUMBER}={_NUMBER}")


@dataclasses.dataclass(frozen=True)
class CountdownLevel(Level):
    ops: str  # operations the generator uses (the checker accepts all four)
    max_number: int  # given numbers are drawn from [1, max_number]
    value_bound: int  # no intermediate result or target exceeds this


class Countdown(Task):
    name = "countdown"
    LEVELS = (
        CountdownLevel(min_steps=1, alpha=2.5, max_steps=5, ops="+-", max_number=10,
                       value_bound=99),
        CountdownLevel(min_steps=2, alpha=1.7, max_steps=8, ops=OPS, max_number=10,
                       value_bound=999),
        CountdownLevel(min_steps=3, alpha=1.4, max_steps=12, ops=OPS, max_number=25,
                       value_bound=999),
        CountdownLevel(min_steps=4, alpha=1.2, max_steps=16, ops=OPS, max_number=100,
                       value_bound=9999),
    )
    level: CountdownLevel

    @property
    def max_numbers(self) -> int:
        return self.max_steps + 1

    @property
    def target_len(self) -> int:
        return 1 + self.max_numbers

    @property
    def max_prompt_len(self) -> int:
        return len(str(self.level.value_bound)) + 1 + self.max_numbers * (
            len(str(self.level.max_number)) + 1)

    @property
    def max_solution_len(self) -> int:
        width = len(str(self.level.value_bound))
        return self.max_steps * (3 * width + 3) + 1 + width

    def sample(self, rng: np.random.Generator) -> Problem:
        lv = self.level
        n_numbers = self.num_steps(rng) + 1
        while True:  # rejection: rarely more than a few tries
            numbers = [int(x) for x in rng.integers(1, lv.max_number + 1, n_numbers)]
            lines, target = self._combine_all(numbers, rng)
            if target is not None and target not in numbers:
                break
        answer = str(target)
        prompt = f"{target}:{','.join(map(str, numbers))}\n"
        return Problem(prompt=prompt, solution="".join(f"{ln}\n" for ln in lines) + f"#{answer}",
                       answer=answer, target=pad_target([target, *numbers], self.target_len))

    def _combine_all(self, numbers: list[int], rng: np.random.Generator):
        """Combines random pairs until one number is left: (lines, it), or (None, None)."""
        pool, lines = list(numbers), []
        while len(pool) > 1:
            i, j = rng.choice(len(pool), 2, replace=False)
            x, y = max(pool[i], pool[j]), min(pool[i], pool[j])
            candidates = []
            for op, ok, c in (("+", True, x + y), ("-", x > y, x - y),
                              ("*", y > 1, x * y), ("/", y > 1 and x % y == 0, x // max(y, 1))):
                if op in self.level.ops and ok and c <= self.level.value_bound:
                    candidates.append((op, c))
            if not candidates:
                return None, None
            op, c = candidates[int(rng.integers(len(candidates)))]
            lines.append(f"{x}{op}{y}={c}")
            pool = [v for k, v in enumerate(pool) if k not in (i, j)] + [c]
        return lines, pool[0]

    def check(self, problem: Problem, completion: str) -> bool:
        answer = final_answer(completion)
        if answer is None or answer != problem.answer:
            return False
        body = completion[:completion.rfind("#")]
        if not body.endswith("\n"):  # also rejects an empty body: at least one step
            return False
        available = [v for v in problem.target[1:] if v != TARGET_PAD]
        result = None
        for line in body[:-1].split("\n"):
            m = _STEP.fullmatch(line)
            if m is None:
                return False
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            if not _exact(a, op, b, c) or a not in available:
                return False
            available.remove(a)
            if b not in available:
                return False
            available.remove(b)
            available.append(c)
            result = c
        return result == problem.target[0]

    def jax_check(self, completion_N, length, target_T):
        tokens_N, n = visible_tokens(completion_N, length)
        has_hash, start, end = answer_span(tokens_N, n)
        steps_ok, result = _scan_steps(tokens_N, start - 1, target_T[1:])
        answer_ok, answer = _parse_number(tokens_N, start, end)
        target = target_T[0]
        return has_hash & steps_ok & (result == target) & answer_ok & (answer == target)


def _exact(a: int, op: str, b: int, c: int) -> bool:
    if op == "+":
        return a + b == c
    if op == "-":
        return a - b == c
    if op == "*":
        return a * b == c
    return b != 0 and a % b == 0 and a // b == c


# ---- The JAX checker ----

_PLUS, _MINUS, _TIMES, _DIVIDE = (char_id(op) for op in OPS)
_EQUALS = char_id("=")


def _is_digit(tok):
    return (tok >= DIGIT0_ID) & (tok < DIGIT0_ID + 10)


def _parse_number(tokens_N, start, end):
    """(ok, value) of tokens_N[start:end] as a canonical number of <= MAX_DIGITS digits."""
    idx_D = start + jnp.arange(MAX_DIGITS)
    tok_D = tokens_N[jnp.clip(idx_D, 0, tokens_N.shape[0] - 1)]
    inside_D = idx_D < end
    n_digits = end - start
    ok = ((n_digits >= 1) & (n_digits <= MAX_DIGITS) & jnp.all(_is_digit(tok_D) | ~inside_D)
          & ((n_digits == 1) | (tok_D[0] != DIGIT0_ID)))
    digit_D = jnp.where(inside_D, tok_D - DIGIT0_ID, 0)
    power_D = 10 ** jnp.clip(n_digits - 1 - jnp.arange(MAX_DIGITS), 0, MAX_DIGITS - 1)
    value = jnp.sum(jnp.where(inside_D, digit_D * power_D, 0))
    return ok, jnp.where(ok, value, TARGET_PAD)


def _exact_jnp(a, op, b, c):
    """c == a op b over non-negative int32 without overflow (products are checked by
    division: every number has <= MAX_DIGITS digits, but a * b could need 12)."""
    safe_b = jnp.maximum(b, 1)
    times = jnp.where(b == 0, c == 0, (c % safe_b == 0) & (c // safe_b == a))
    divide = (b > 0) & (a % safe_b == 0) & (a // safe_b == c)
    return jnp.select([op == _PLUS, op == _MINUS, op == _TIMES], [a + b == c, a - b == c, times],
                      divide)


def _scan_steps(tokens_N, stop, numbers_M):
    """Runs the step lines tokens_N[:stop] through a state machine: (ok, last result).

    `ok` says the lines were all well-formed `a op b=c\\n`, exact, used only available
    numbers, and there was at least one. The machine reads one token at a time:

        field 0 (reading a) --op--> field 1 (reading b) --'='--> field 2 (reading c)
        --'\\n'--> check the step, consume a and b, add c, back to field 0

    Digits extend the current number (no leading zeros, at most MAX_DIGITS); any other
    token, or a transition from the wrong field or with an empty number, clears `ok`.
    The pool holds the given numbers and then one result per step: a valid run makes at
    most M - 1 steps (each consumes two numbers and adds one), so 2M - 1 slots suffice.
    """
    m = numbers_M.shape[0]
    pool_K = jnp.concatenate([numbers_M, jnp.full((m - 1,), TARGET_PAD, jnp.int32)])
    init = dict(
        ok=jnp.bool_(True),
        field=jnp.int32(0),
        num=jnp.int32(0),  # value of the number being read
        n_digits=jnp.int32(0),
        a=jnp.int32(0), op=jnp.int32(0), b=jnp.int32(0),
        pool_K=pool_K,
        free_K=pool_K != TARGET_PAD,  # available: given or produced, not yet used
        n_pool=(numbers_M != TARGET_PAD).sum(dtype=jnp.int32),
        n_steps=jnp.int32(0),
        result=jnp.int32(TARGET_PAD),
    )

    def read(s, pos_tok):
        pos, tok = pos_tok
        digit_ok = (s["n_digits"] < MAX_DIGITS) & ~((s["n_digits"] == 1) & (s["num"] == 0))
        have_num = s["n_digits"] > 0
        is_op = (tok == _PLUS) | (tok == _MINUS) | (tok == _TIMES) | (tok == _DIVIDE)

        # Ending a line: is the step exact, and are a then b free in the pool?
        c = s["num"]
        match_a_K = s["free_K"] & (s["pool_K"] == s["a"])
        slot_a = jnp.argmax(match_a_K)
        free_K = s["free_K"].at[slot_a].set(False)
        match_b_K = free_K & (s["pool_K"] == s["b"])
        free_K = free_K.at[jnp.argmax(match_b_K)].set(False)
        step_ok = (_exact_jnp(s["a"], s["op"], s["b"], c) & jnp.any(match_a_K)
                   & jnp.any(match_b_K))

        new = dict(s)
        new["num"] = jnp.where(_is_digit(tok), s["num"] * 10 + tok - DIGIT0_ID, 0)
        new["n_digits"] = jnp.where(_is_digit(tok), s["n_digits"] + 1, 0)
        new["a"] = jnp.where(is_op, s["num"], s["a"])
        new["op"] = jnp.where(is_op, tok, s["op"])
        new["b"] = jnp.where(tok == _EQUALS, s["num"], s["b"])
        new["field"] = jnp.select([is_op, tok == _EQUALS, tok == NEWLINE_ID],
                                  [1, 2, 0], s["field"])
        line_end = tok == NEWLINE_ID
        new["pool_K"] = jnp.where(line_end, s["pool_K"].at[s["n_pool"]].set(c, mode="drop"),
                                  s["pool_K"])
        new["free_K"] = jnp.where(line_end, free_K.at[s["n_pool"]].set(True, mode="drop"),
                                  s["free_K"])
        new["n_pool"] = s["n_pool"] + line_end
        new["n_steps"] = s["n_steps"] + line_end
        new["result"] = jnp.where(line_end, c, s["result"])
        token_ok = jnp.select(
            [_is_digit(tok), is_op, tok == _EQUALS, line_end],
            [digit_ok, (s["field"] == 0) & have_num, (s["field"] == 1) & have_num,
             (s["field"] == 2) & have_num & step_ok],
            False)
        new["ok"] = s["ok"] & token_ok
        # Tokens from `stop` on (the answer line and after) are not steps.
        return jax.tree.map(lambda x, y: jnp.where(pos < stop, x, y), new, s), None

    n_max = tokens_N.shape[0]
    final, _ = jax.lax.scan(read, init, (jnp.arange(n_max), tokens_N))
    ended_clean = (final["field"] == 0) & (final["n_digits"] == 0)
    return final["ok"] & ended_clean & (final["n_steps"] >= 1), final["result"]
