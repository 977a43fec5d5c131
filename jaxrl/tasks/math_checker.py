"""Final-answer checking for free-form math (GSM8K, MATH, DeepScaleR style).

    check("... so the total is $\\boxed{\\frac{3}{4}}$.", "0.75")   -> True

`extract_answer(text)` finds the completion's final answer, trying in order:

1. the last non-empty, closed `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`), braces
   matched to any depth (a truncated `\\boxed{12` at the end is passed over);
2. the text after the last `####` up to the end of that line (GSM8K);
3. the text after the last "answer is" / "answer:" (any case) up to the end of that
   line or sentence;
4. the last number in the text (sign, thousands commas, decimals, a/b allowed).

An earlier rule that matches but yields nothing (`\\boxed{}`, a bare `####`) falls
through to the next. No rule matching gives None.

`normalize(ans)` gives a canonical string: it drops math delimiters and spacing macros,
`$`, `%`, degrees, `\\left`/`\\right`, unit text (`5\\text{ cm}^2`, `5 cm`; a one-letter
word stays, as a variable), a leading `x =`, thousands commas and a final period; it
rewrites `\\dfrac`/`\\tfrac` to `\\frac` and the shorthands `\\frac12`, `\\sqrt2`.

`is_equivalent(pred, gold)` is true when the normalized strings are equal (words compared
case-blind), or both evaluate to the same number. The evaluator reads numbers, + - * /
^, implicit multiplication (`2\\sqrt{2}`, `3\\pi`), parentheses and braces, `\\frac`,
`\\sqrt`, `\\sqrt[n]`, `\\pi`, `\\cdot`, `\\times`, `\\div`, and nothing else: any other
symbol (a variable, a function) makes it give up, and the strings decide. Rationals
are compared exactly (0.75 == \\frac{3}{4}, 3.0 == 3, but 0.333 != 1/3); anything with a
root or pi is compared in float64 to 1e-9 relative (1.414 is not \\sqrt{2}; 1.41421356237
is). Tuples and intervals with the same brackets are compared element by element. A
number next to a fraction is a product, as in LaTeX (`2\\frac{1}{2}` is 1, not the mixed
number 2.5), and `50%` is 50.

No function here raises on any input, and a typical call takes tens of microseconds:
input over MAX_LEN characters is only string-compared, and the evaluator bounds nesting,
exponents and the size of exact results.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_LEN = 400  # longer answers are compared as strings only
_MAX_DEPTH = 40  # nesting the evaluator follows
_MAX_BITS = 4096  # size of an exact intermediate result
_REL_TOL = 1e-9

Value = Fraction | float


# ---- Extraction ----

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_BOXED_ARG = re.compile(r"[^\s${}]+")
_HASHES = "####"
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?", re.IGNORECASE)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def extract_answer(text: str) -> str | None:
    """The final answer in `text` (see the module doc for the rules), or None."""
    if not isinstance(text, str):
        return None
    for rule in (last_boxed, after_hashes, _after_answer_is, _last_number):
        ans = rule(text)
        if ans:
            return ans
    return None


def last_boxed(text: str) -> str | None:
    """Rule 1: the contents of the last non-empty, closed box, or None."""
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
    """Rule 2: the rest of the line after the last `####` (maybe empty), or None."""
    i = text.rfind(_HASHES)
    if i < 0:
        return None
    return text[i + len(_HASHES):].split("\n", 1)[0].strip()


def _after_answer_is(text: str) -> str | None:
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    if last is None:
        return None
    rest = text[last.end():].split("\n", 1)[0]
    end = _SENTENCE_END.search(rest)
    if end:
        rest = rest[:end.start()]
    return rest.strip()


def _last_number(text: str) -> str | None:
    last = None
    for last in _NUMBER.finditer(text):
        pass
    return None if last is None else last.group()


# ---- Normalization ----

_DELIMITERS = re.compile(r"\\[()\[\]]|\\\$|\$")
_SPACING = re.compile(r"\\[,;:! ]|~|\\quad|\\qquad")
_DROPPED = re.compile(r"\\left|\\right|\\displaystyle|\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ"
                      r"|°|\\%|%")
_TEXT_GROUP = re.compile(r"\\(?:text|textbf|textrm|textit|mbox|mathrm|mathbf|operatorname)"
                         r"\s*\{([^{}]*)\}")
_UNIT_POWER = re.compile(r"\s*\^\s*(?:\d|\{\s*\d\s*\})")  # cm^2, cm^{3}
_UNIT_TEXT = re.compile(r"^[\sA-Za-z.^0-9]*$")
_TRAILING_UNITS = re.compile(r"(?<=[\d}])(?:\s+(?!pi\b)[A-Za-z]{2,}\.?(?:\^\d)?)+\s*$")
_ASSIGNMENT = re.compile(r"^[A-Za-z]\s*=\s*(?=[^=]+$)")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF_SHORT = re.compile(r"\\frac\s*(\d)\s*(?=\{)")
_FRAC_SHORT_DEN = re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d)")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_CHOICE = re.compile(r"^\(([A-Za-z])\)$")
_WORDS = re.compile(r"^[A-Za-z ]+$")


def normalize(ans: str) -> str:
    """A canonical string for comparing answers (see the module doc)."""
    if not isinstance(ans, str):
        return ""
    s = ans.strip()
    if len(s) > MAX_LEN:
        return "".join(s.split())
    s = s.replace("\u2212", "-").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DELIMITERS.sub("", s)
    s = _SPACING.sub(" ", s)
    s = _DROPPED.sub("", s)
    s = _strip_text_groups(s)
    s = _TRAILING_UNITS.sub("", s.strip())
    s = _ASSIGNMENT.sub("", s)
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_SHORT.sub(r"\\frac{\1}", s)
    s = _FRAC_SHORT_DEN.sub(r"\\frac\1{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = "".join(s.split()).rstrip(".")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if s.startswith("+"):
        s = s[1:]
    s = _CHOICE.sub(r"\1", s)
    return s


def _strip_text_groups(s: str) -> str:
    """Drops unit-like text groups (letters, digits, spaces: `5\\text{ cm}^2`) when
    something else is left; unwraps the other text groups (`\\text{(A)}`), and all of
    them when nothing else is left (`\\text{yes}`)."""
    pieces, pos = [], 0  # (text before, group contents, unit-like, unit power)
    for m in _TEXT_GROUP.finditer(s):
        is_unit = bool(_UNIT_TEXT.match(m.group(1)))
        power = _UNIT_POWER.match(s, m.end()) if is_unit else None
        pieces.append((s[pos:m.start()], m.group(1), is_unit, power.group() if power else ""))
        pos = power.end() if power else m.end()
    if not pieces:
        return s
    tail = s[pos:]
    drop_units = bool(tail.strip()) or any(
        before.strip() or not is_unit for before, _, is_unit, _ in pieces)
    return "".join(before + ("" if is_unit and drop_units else inner + power)
                   for before, inner, is_unit, power in pieces) + tail


# ---- Equivalence ----

def is_equivalent(pred: str | None, gold: str | None) -> bool:
    """Whether two final answers are the same (see the module doc for what counts)."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    a, b = normalize(pred), normalize(gold)
    return _same(a, b, depth=0)


def _same(a: str, b: str, depth: int) -> bool:
    if not a or not b:
        return False
    if a == b:
        return True
    if _WORDS.match(a) and _WORDS.match(b):
        return a.casefold() == b.casefold()
    va, vb = evaluate(a), evaluate(b)
    if va is not None and vb is not None:
        return _close(va, vb)
    if depth == 0 and max(len(a), len(b)) <= MAX_LEN:
        ea, eb = _elements(a), _elements(b)
        if ea and eb and ea[0] == eb[0] and len(ea[1]) == len(eb[1]) > 1:
            return all(_same(x, y, depth=1) for x, y in zip(ea[1], eb[1]))
    return False


def _close(x: Value, y: Value) -> bool:
    if isinstance(x, Fraction) and isinstance(y, Fraction):
        return x == y
    try:
        fx, fy = float(x), float(y)
    except OverflowError:
        return False
    return math.isclose(fx, fy, rel_tol=_REL_TOL, abs_tol=1e-12)


_BRACKETS = {"(": ")", "[": "]", "\\{": "\\}", "": ""}


def _elements(s: str) -> tuple[tuple[str, str], list[str]] | None:
    """((open, close), items) for a tuple/interval/list `(a,b)`, `[a,b)`, `a,b`; items are
    split on top-level commas. None if the brackets do not nest."""
    open_ = next((o for o in ("\\{", "(", "[") if s.startswith(o)), "")
    close = next((c for c in ("\\}", ")", "]") if s.endswith(c)), "") if open_ else ""
    if open_ and not close:
        return None
    body = s[len(open_):len(s) - len(close)]
    items, depth, start = [], 0, 0
    for i, c in enumerate(body):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif c == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    if depth != 0:
        return None
    items.append(body[start:])
    return (open_, close), items


def check(completion: str, gold_answer: str) -> bool:
    """Whether the completion's final answer (extract_answer) equals `gold_answer`. A gold
    answer that still holds a `\\boxed{}` or `####` is extracted first."""
    if not isinstance(gold_answer, str):
        return False
    if "\\boxed" in gold_answer or _HASHES in gold_answer:
        gold_answer = extract_answer(gold_answer) or ""
    return is_equivalent(extract_answer(completion), gold_answer)


# ---- A small, safe evaluator ----

_TOKEN = re.compile(r"\s*(\d+\.?\d*|\.\d+|\\[A-Za-z]+|[A-Za-z]+|\\[{}]|[-+*/^(){}\[\]]"
                    r"|[π√×÷·])")
_OPEN = {"(": ")", "{": "}", "[": "]"}
_MUL_OPS = {"*", "\\cdot", "\\times", "×", "·"}
_DIV_OPS = {"/", "\\div", "÷"}
_PI = {"\\pi", "pi", "π"}
_SQRT = {"\\sqrt", "sqrt", "√"}


class _Unreadable(Exception):
    """The evaluator does not read this string; the caller falls back to strings."""


def evaluate(s: str) -> Value | None:
    """The value of a normalized answer, exact (Fraction) where it can be; None when the
    string is not a plain expression of numbers, + - * / ^, roots and pi."""
    if not isinstance(s, str) or not s or len(s) > MAX_LEN:
        return None
    try:
        tokens = _tokenize(s)
        parser = _Parser(tokens)
        value = parser.expr(0)
        if parser.pos != len(tokens):
            return None
        return value
    except (_Unreadable, ZeroDivisionError, OverflowError, ValueError):
        return None


def _tokenize(s: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m:
            raise _Unreadable
        tok = m.group(1)
        if tokens and _is_number(tok) and _is_number(tokens[-1]):
            raise _Unreadable  # `1.5.2` is not the product 1.5 * .2
        tokens.append(tok)
        pos = m.end()
    return tokens


def _is_number(tok: str) -> bool:
    return tok[0].isdigit() or tok[0] == "."


class _Parser:
    """Recursive descent over tokens; every method takes the nesting depth."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _Unreadable
        self.pos += 1
        return tok

    def expr(self, depth: int) -> Value:
        if depth > _MAX_DEPTH:
            raise _Unreadable
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = _checked(value + rhs if op == "+" else value - rhs)
        return value

    def term(self, depth: int) -> Value:
        value = self.unary(depth)
        while True:
            tok = self.peek()
            if tok in _MUL_OPS:
                self.take()
                value = _checked(value * self.unary(depth))
            elif tok in _DIV_OPS:
                self.take()
                rhs = self.unary(depth)
                if rhs == 0:
                    raise _Unreadable
                value = _checked(value / rhs)
            elif tok is not None and _starts_atom(tok):  # implicit: 2\sqrt{2}, 3\pi, 2(3)
                value = _checked(value * self.power(depth))
            else:
                return value

    def unary(self, depth: int) -> Value:
        if self.peek() in ("+", "-"):
            sign = self.take()
            if depth > _MAX_DEPTH:
                raise _Unreadable
            value = self.unary(depth + 1)
            return -value if sign == "-" else value
        return self.power(depth)

    def power(self, depth: int) -> Value:
        base = self.atom(depth)
        if self.peek() == "^":
            self.take()
            exponent = self.unary(depth + 1)  # right-associative: 2^3^2 = 2^9
            return _pow(base, exponent)
        return base

    def atom(self, depth: int) -> Value:
        if depth > _MAX_DEPTH:
            raise _Unreadable
        tok = self.take()
        if _is_number(tok):
            return Fraction(tok)
        if tok in _PI:
            return math.pi
        if tok in _OPEN:
            value = self.expr(depth + 1)
            self.take(_OPEN[tok])
            return value
        if tok == "\\frac":
            num = self.group(depth + 1)
            den = self.group(depth + 1)
            if den == 0:
                raise _Unreadable
            return _checked(num / den)
        if tok in _SQRT:
            index: Value = Fraction(2)
            if self.peek() == "[":
                self.take()
                index = self.expr(depth + 1)
                self.take("]")
            return _root(self.atom(depth + 1), index)
        raise _Unreadable

    def group(self, depth: int) -> Value:
        """A `\\frac` argument: a brace group, or a single token."""
        if self.peek() == "{":
            self.take()
            value = self.expr(depth)
            self.take("}")
            return value
        return self.atom(depth)


def _starts_atom(tok: str) -> bool:
    return _is_number(tok) or tok in _PI or tok in _SQRT or tok in ("(", "{", "\\frac")


def _checked(x: Value) -> Value:
    if isinstance(x, Fraction):
        if x.numerator.bit_length() > _MAX_BITS or x.denominator.bit_length() > _MAX_BITS:
            raise _Unreadable
        return x
    if math.isnan(x) or math.isinf(x):
        raise _Unreadable
    return x


def _pow(base: Value, exponent: Value) -> Value:
    if isinstance(base, Fraction) and isinstance(exponent, Fraction) \
            and exponent.denominator == 1:
        e = exponent.numerator
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if bits * abs(e) > _MAX_BITS:
            raise _Unreadable
        if base == 0 and e < 0:
            raise _Unreadable
        return base ** e
    if isinstance(exponent, Fraction) and isinstance(base, Fraction) and base >= 0 \
            and abs(exponent.denominator) <= 64:
        # x^(p/q) = (x^(1/q))^p, exact when x is a perfect q-th power
        root = _root(base, Fraction(exponent.denominator))
        return _pow(root, Fraction(exponent.numerator))
    fb, fe = float(base), float(exponent)
    if (fb < 0 and not fe.is_integer()) or (fb == 0 and fe < 0) or abs(fe) > 4096:
        raise _Unreadable
    return _checked(math.pow(fb, fe))


def _root(x: Value, index: Value) -> Value:
    if not (isinstance(index, Fraction) and index.denominator == 1 and 2 <= index <= 64):
        raise _Unreadable
    n = index.numerator
    if isinstance(x, Fraction):
        negative = x < 0
        if negative and n % 2 == 0:
            raise _Unreadable
        num, den = _int_root(abs(x.numerator), n), _int_root(x.denominator, n)
        if num is not None and den is not None:
            return Fraction(-num if negative else num, den)
        fx = float(abs(x))
        return _checked((-1 if negative else 1) * fx ** (1.0 / n))
    if x < 0:
        raise _Unreadable
    return _checked(x ** (1.0 / n))


def _int_root(k: int, n: int) -> int | None:
    """The exact integer n-th root of k >= 0, or None."""
    if k < 2:
        return k
    r = round(k ** (1.0 / n)) if k.bit_length() < 1000 else None
    if r is None:
        return None
    for c in (r - 1, r, r + 1):
        if c >= 0 and c ** n == k:
            return c
    return None
