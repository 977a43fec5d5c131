"""Where a math text states its final answer: the last `\\boxed{}`, or the `####` line.

    last_boxed("first \\boxed{3}, then \\boxed{\\frac{1}{2}}")   -> "\\frac{1}{2}"
    after_hashes("48 + 24 = 72\n#### 72")                        -> "72"

`last_boxed` takes the last non-empty, closed `\\boxed{...}` (or `\\fbox{...}`, or
`\\boxed 5`), braces matched to any depth; a truncated `\\boxed{12` at the end is passed
over. tfds_builders uses both to store each JSONL row's final answer, and the JSONL format
reward uses `last_boxed`; whether an answer is right is math_reward's job (math-verify).
Neither function raises on a string, and both take one pass over it.
"""
from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_BOXED_ARG = re.compile(r"[^\s${}]+")
_HASHES = "####"


def last_boxed(text: str) -> str | None:
    """The contents of the last non-empty, closed box, or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    closing = _matching_braces(text)
    for start in reversed(starts):
        if start < len(text) and text[start] == "{":
            end = closing.get(start)
            if end is not None and text[start + 1:end].strip():
                return text[start + 1:end].strip()
        else:  # `\boxed 5`: the argument runs to a space, '$' or the end
            arg = _BOXED_ARG.match(text, start)
            if arg:
                return arg.group()
    return None


def _matching_braces(text: str) -> dict[int, int]:
    """{index of '{': index of its '}'} for the closed groups, in one pass."""
    closing, stack = {}, []
    for i, c in enumerate(text):
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            closing[stack.pop()] = i
    return closing


def after_hashes(text: str) -> str | None:
    """The rest of the line after the last `####` (maybe empty), or None."""
    i = text.rfind(_HASHES)
    if i < 0:
        return None
    return text[i + len(_HASHES):].split("\n", 1)[0].strip()
