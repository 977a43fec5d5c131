"""Multi-step integer arithmetic with a scratchpad: one operation per line.

    prompt:    "12+7*3-5\n"
    solution:  "7*3=21\n12+21=33\n33-5=28\n#28"

Usual precedence: the scratchpad first collapses each run of '*' left to right, then
applies '+' and '-' left to right. Each line is `a op b=c` with plain decimal integers
(c, and a on +/- lines, may be negative: "5-30=-25\n-25+3=-22"). A completion is right iff
its answer (after the last '#') is exactly the value in canonical form: no '+', no
leading zeros, '-' only for negatives, no spaces. The steps are not checked.

The number of operations is long-tailed (see base.long_tailed_int); each multiplicative
term stays within the level's `term_bound`, so values, and lengths, stay bounded.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxrl.tasks.base import AnswerMatchTask, Level, Problem


@dataclasses.dataclass(frozen=True)
class ArithmeticLevel(Level):
    ops: str  # operators that may appear
    max_operand: int  # operands of + and - are drawn from [0, max_operand]
    max_factor: int  # the right operand of '*' is drawn from [2, max_factor]
    term_bound: int  # no product of a '*' run exceeds this
    allow_negative: bool  # if not (only for levels without '*'), no partial result is < 0


class Arithmetic(AnswerMatchTask):
    name = "arithmetic"
    LEVELS = (
        ArithmeticLevel(min_steps=1, alpha=2.5, max_steps=8, ops="+-", max_operand=99,
                        max_factor=0, term_bound=0, allow_negative=False),
        ArithmeticLevel(min_steps=2, alpha=1.8, max_steps=16, ops="+-*", max_operand=99,
                        max_factor=9, term_bound=999, allow_negative=True),
        ArithmeticLevel(min_steps=2, alpha=1.5, max_steps=24, ops="+-*", max_operand=999,
                        max_factor=99, term_bound=9999, allow_negative=True),
        ArithmeticLevel(min_steps=3, alpha=1.3, max_steps=32, ops="+-*", max_operand=999,
                        max_factor=999, term_bound=99999, allow_negative=True),
    )
    level: ArithmeticLevel

    @property
    def _max_abs(self) -> int:
        """No operand, partial result or answer exceeds this in absolute value."""
        return (self.max_steps + 1) * max(self.level.max_operand, self.level.term_bound)

    @property
    def _max_number_len(self) -> int:
        return len(str(-self._max_abs))

    @property
    def target_len(self) -> int:
        return self._max_number_len

    @property
    def max_prompt_len(self) -> int:
        operand_len = len(str(max(self.level.max_operand, self.level.max_factor)))
        return (self.max_steps + 1) * (operand_len + 1)  # operands, operators and "\n"

    @property
    def max_solution_len(self) -> int:
        line = 3 * self._max_number_len + 3  # "a op b=c\n"
        return self.max_steps * line + 1 + self._max_number_len

    def sample(self, rng: np.random.Generator) -> Problem:
        lv = self.level
        n_ops = self.num_steps(rng)
        operands = [int(rng.integers(0, lv.max_operand + 1))]
        ops: list[str] = []
        term = operands[0]  # value of the '*' run that a next '*' would extend
        total = operands[0]  # value so far; the plain running sum on levels without '*'
        for _ in range(n_ops):
            choices = ["+"]
            if lv.allow_negative or total > 0:
                choices.append("-")
            if "*" in lv.ops and 2 * term <= lv.term_bound:
                choices.append("*")
            op = choices[int(rng.integers(len(choices)))]
            if op == "*":
                largest = min(lv.max_factor, lv.term_bound // term) if term else lv.max_factor
                b = int(rng.integers(2, largest + 1))
                term *= b
            else:
                largest = lv.max_operand if lv.allow_negative or op == "+" else total
                b = int(rng.integers(0, min(largest, lv.max_operand) + 1))
                term = b
                total = total + b if op == "+" else total - b
            ops.append(op)
            operands.append(b)
        prompt = "".join(f"{a}{op}" for a, op in zip(operands, ops)) + f"{operands[-1]}\n"
        lines, value = _scratchpad(operands, ops)
        answer = str(value)
        return Problem(prompt=prompt, solution="".join(f"{ln}\n" for ln in lines) + f"#{answer}",
                       answer=answer, target=self.make_target(answer))


def _scratchpad(operands: list[int], ops: list[str]) -> tuple[list[str], int]:
    """Lines of the reference solution and the value: '*' runs first, then + and -."""
    lines = []
    terms, signs = [operands[0]], []
    for op, b in zip(ops, operands[1:]):
        if op == "*":
            lines.append(f"{terms[-1]}*{b}={terms[-1] * b}")
            terms[-1] *= b
        else:
            terms.append(b)
            signs.append(op)
    value = terms[0]
    for op, t in zip(signs, terms[1:]):
        new = value + t if op == "+" else value - t
        lines.append(f"{value}{op}{t}={new}")
        value = new
    return lines, value
